"""Alignment stages: which motors are aligned, and which diagnostic judges them.

Beamline staff align from the source down: M1, then the monochromator, the
secondary slits, the KB pair and the sample. :func:`stages` derives those
stages from any beamline description by element type and position, so a
user's preset gets them too:

``m1``
    pitch, height and bend of every mirror upstream of the monochromator,
    judged at the first screen or BPM after them (beam centred, full flux).
``mono``
    second-crystal pitch and roll of the monochromator, judged at the first BPM
    or screen after it (on the rocking-curve peak, beam centred).
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

__all__ = ["Stage", "stages", "stage", "ordered_stages", "STAGE_ORDER"]

#: the progressive order of one-click alignment
STAGE_ORDER = ("m1", "mono", "slits", "kb", "sample")

Goal = Literal["centre", "flux", "focus", "target"]


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
    """

    name: str
    motors: tuple[str, ...]
    diagnostic: str
    goal: Goal
    span_sigmas: float = 4.0

    @property
    def dof(self) -> int:
        """Degrees of freedom."""
        return len(self.motors)


def _motors(e: Element, axes: tuple[str, ...]) -> list[str]:
    return [f"{e.name}.{m.axis}" for m in e.motors if m.axis in axes]


def _next_diagnostic(desc: BeamlineDescription, after: int,
                     kinds: tuple[type, ...]) -> str | None:
    for e in desc.elements[after + 1:]:
        if isinstance(e, kinds):
            return e.name
    return None


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
    if up_motors:
        judge = _next_diagnostic(desc, up[-1][0], (Screen, BeamPositionMonitor))
        if judge is not None:
            out["m1"] = Stage(name="m1", motors=tuple(up_motors), diagnostic=judge, goal="centre")
    if mono_i is not None:
        mono_motors = _motors(els[mono_i], ("pitch2", "roll2"))
        judge = _next_diagnostic(desc, mono_i, (BeamPositionMonitor, Screen))
        if mono_motors and judge is not None:
            out["mono"] = Stage(name="mono", motors=tuple(mono_motors), diagnostic=judge,
                                goal="centre")
    after = [(i, e) for i, e in enumerate(els) if i > split]
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
