"""Alignment stages: which motors are aligned, and which diagnostic judges them.

Beamline staff align from the source down: M1, then the monochromator, the
secondary slits, the KB pair and the sample. :func:`stages` derives those
stages from any beamline description by element type and position, so a
user's preset gets them too:

``m1``
    pitch, height and bend of every mirror upstream of the monochromator,
    judged at the first screen or BPM after them (beam centred, full flux), and
    pointed at the last BPM or screen before the focusing optics.
``mono``
    second-crystal pitch and roll of the monochromator, judged at the first BPM
    or screen after it (on the rocking-curve peak), and pointed at the last BPM
    or screen before the focusing optics. Without such a far diagnostic, the
    beam must also be centred on the first one.
``slits``
    centres of the slits after the monochromator, judged by the flux at the
    next diagnostic.
``kb``
    pitch, height and bend of every mirror after the monochromator (6 DOF for a
    KB pair), judged at the sample by brightness (flux per spot area).
``sample``
    the sample stage's x, y and z, judged at the sample (beam on the target,
    in focus).
``full``
    every DOF above at once, judged at the sample.

Pointing
--------
A screen 1.5 m after a mirror cannot tell the mirror's pitch from its height:
both move the beam there, and one cancels the other. 25 m further on, at the
focusing optics, the pitch error left behind is what counts: on the default
beamline 1 urad of M1 pitch moves the beam 58 um at the KB, whose horizontal
mirror accepts 1.05 mm for a 0.9 mm beam, and 4 urad already cost 16 % of the
flux at the sample. The upstream stages are therefore also judged by where the
beam arrives at the last diagnostic before the focusing optics (``kb_bpm`` on
the default beamline): within ``pointing_um`` of the ideal beam there, in the
planes the stage's optics deflect (M1: horizontal; the DCM: both, pitch
vertically and roll horizontally).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from twin.description import (
    BeamlineDescription,
    BeamPositionMonitor,
    CrystalMonochromator,
    Element,
    IonChamber,
    Mirror,
    MultilayerMonochromator,
    SampleStage,
    Screen,
    Slits,
)
from twin.errors import ConfigError, UnknownNameError

__all__ = ["Stage", "stages", "stage", "ordered_stages", "STAGE_ORDER", "POINTING_UM"]

#: the progressive order of one-click alignment
STAGE_ORDER = ("m1", "mono", "slits", "kb", "sample")

Goal = Literal["centre", "flux", "focus", "target"]
Plane = Literal["x", "y"]

#: default pointing tolerance at the long-lever diagnostic, um: the beam within 20 um of
#: its ideal position at the KB entrance keeps the flux at the sample within 2 % (the KB-H
#: mirror accepts 1.05 mm for a 0.9 mm beam on the default beamline)
POINTING_UM = 20.0


@dataclass(frozen=True, kw_only=True)
class Stage:
    """One alignment stage.

    Attributes
    ----------
    name : str
    motors : tuple of str
        ``element.axis`` names, in a fixed order (the agent's coordinates).
    diagnostic : str
        The observation point that judges the stage.
    goal : {"centre", "flux", "focus", "target"}
        ``centre``: full flux with the beam on the design axis; ``flux``: full
        flux; ``focus``: flux per spot area (brightness); ``target``: focus with
        the beam on the sample's origin.
    span_sigmas : float
        Half-width of the search box, in units of each motor's typical
        misalignment. The sample stage searches wider: after the KB is aligned
        the focus sits wherever the KB's own errors put it, tens of um away.
    pointing : tuple of str
        Diagnostics far downstream where the beam must also arrive on the ideal
        beam's position (see the module docstring); empty: none.
    pointing_planes : tuple of {"x", "y"}
        The planes in which the pointing is judged: those the stage's optics deflect.
    pointing_um : float
        Allowed centroid offset at each pointing diagnostic, in each plane, um.
    """

    name: str
    motors: tuple[str, ...]
    diagnostic: str
    goal: Goal
    span_sigmas: float = 4.0
    pointing: tuple[str, ...] = ()
    pointing_planes: tuple[Plane, ...] = ()
    pointing_um: float = POINTING_UM

    @property
    def dof(self) -> int:
        """Degrees of freedom."""
        return len(self.motors)

    @property
    def diagnostics(self) -> tuple[str, ...]:
        """Every diagnostic the stage is judged by: its own, then the pointing ones."""
        return (self.diagnostic, *self.pointing)

    @property
    def pointing_terms(self) -> tuple[tuple[str, Plane], ...]:
        """``(diagnostic, plane)`` of every pointing offset, in a fixed order."""
        return tuple((d, p) for d in self.pointing for p in self.pointing_planes)


def _motors(e: Element, axes: tuple[str, ...]) -> list[str]:
    return [f"{e.name}.{m.axis}" for m in e.motors if m.axis in axes]


def _next_diagnostic(desc: BeamlineDescription, after: int,
                     kinds: tuple[type, ...]) -> str | None:
    for e in desc.elements[after + 1:]:
        if isinstance(e, kinds):
            return e.name
    return None


def _planes(elements: Sequence[Element]) -> tuple[Plane, ...]:
    """The planes the elements deflect in: a mirror its own, a monochromator both
    (pitch vertically, roll horizontally)."""
    planes: set[str] = set()
    for e in elements:
        if isinstance(e, Mirror):
            planes.add("x" if e.deflection in ("left", "right") else "y")
        else:
            planes.update(("x", "y"))
    return tuple(p for p in ("x", "y") if p in planes)  # type: ignore[misc]


def _lever(desc: BeamlineDescription, judge: str, before: int) -> tuple[str, ...]:
    """The last BPM or screen before element *before*, if it is not *judge*."""
    far = None
    for e in desc.elements[:before]:
        if isinstance(e, (BeamPositionMonitor, Screen)):
            far = e.name
    return (far,) if far is not None and far != judge else ()


def stages(desc: BeamlineDescription) -> dict[str, Stage]:
    """Every stage this beamline has, by name (see the module docstring)."""
    els = desc.elements
    mono_i = next((i for i, e in enumerate(els)
                   if isinstance(e, (CrystalMonochromator, MultilayerMonochromator))), None)
    sample = next((e for e in els if isinstance(e, SampleStage)), None)
    out: dict[str, Stage] = {}
    split = mono_i if mono_i is not None else len(els)
    up = [(i, e) for i, e in enumerate(els[:split]) if isinstance(e, Mirror)]
    up_motors = [m for _, e in up for m in _motors(e, ("pitch", "height", "bend"))]
    after = [(i, e) for i, e in enumerate(els) if i > split]
    focusing = next((i for i, e in after if isinstance(e, Mirror)), None)
    if up_motors:
        judge = _next_diagnostic(desc, up[-1][0], (Screen, BeamPositionMonitor))
        if judge is not None:
            lever = _lever(desc, judge, focusing) if focusing is not None else ()
            out["m1"] = Stage(name="m1", motors=tuple(up_motors), diagnostic=judge,
                              goal="centre", pointing=lever,
                              pointing_planes=_planes([e for _, e in up]) if lever else ())
    if mono_i is not None:
        mono_motors = _motors(els[mono_i], ("pitch2", "roll2"))
        judge = _next_diagnostic(desc, mono_i, (BeamPositionMonitor, Screen))
        if mono_motors and judge is not None:
            lever = _lever(desc, judge, focusing) if focusing is not None else ()
            # pitch2 and roll2 only tilt the beam: 1 m on, where the BPM sits, the beam's
            # height is the crystal gap's and M1's to set. With a far diagnostic the
            # stage is judged by flux there and by pointing far away; without, by centring
            out["mono"] = Stage(name="mono", motors=tuple(mono_motors), diagnostic=judge,
                                goal="flux" if lever else "centre", pointing=lever,
                                pointing_planes=_planes([els[mono_i]]) if lever else ())
    slit_motors = [m for _, e in after if isinstance(e, Slits)
                   for m in _motors(e, ("hcen", "vcen"))]
    slit_i = next((i for i, e in after if isinstance(e, Slits)), None)
    if slit_motors and slit_i is not None:
        judge = _next_diagnostic(desc, slit_i, (IonChamber, BeamPositionMonitor, Screen))
        if judge is not None:
            out["slits"] = Stage(name="slits", motors=tuple(slit_motors), diagnostic=judge,
                                 goal="flux")
    kb_motors = [m for _, e in after if isinstance(e, Mirror)
                 for m in _motors(e, ("pitch", "height", "bend"))]
    if kb_motors and sample is not None:
        out["kb"] = Stage(name="kb", motors=tuple(kb_motors), diagnostic=sample.name,
                          goal="focus")
    if sample is not None:
        s_motors = _motors(sample, ("x", "y", "z"))
        if s_motors:
            out["sample"] = Stage(name="sample", motors=tuple(s_motors),
                                  diagnostic=sample.name, goal="target", span_sigmas=12.0)
        every = [m for name in STAGE_ORDER if name in out for m in out[name].motors]
        if every:
            out["full"] = Stage(name="full", motors=tuple(dict.fromkeys(every)),
                                diagnostic=sample.name, goal="target")
    return out


def stage(desc: BeamlineDescription, name: str) -> Stage:
    """The stage called *name*; raises UnknownNameError listing those that exist."""
    all_ = stages(desc)
    if name not in all_:
        raise UnknownNameError(f"unknown alignment stage {name!r} for beamline {desc.name!r}; "
                               f"available: {', '.join(all_) or 'none'}")
    return all_[name]


def ordered_stages(desc: BeamlineDescription, names: Sequence[str] | None = None) -> list[Stage]:
    """The stages called *names*, in that order (default: all of *desc*'s, in
    :data:`STAGE_ORDER`); an unknown name raises ConfigError naming the available ones."""
    available = stages(desc)
    chosen = list(names) if names else [s for s in STAGE_ORDER if s in available]
    for n in chosen:
        if n not in available:
            raise ConfigError(f"unknown alignment stage {n!r}; available: "
                              f"{', '.join(available)}")
    return [available[n] for n in chosen]
