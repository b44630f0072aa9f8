"""The scans a beamline offers, as bluesky plans (BLISS names, bluesky machinery).

Each plan is a generator for the RunEngine and takes any bluesky devices: the
beamline's own (:mod:`controllers.scan_devices`, over the twin or EPICS) or
ophyd devices in a user's session (:func:`controllers.devices.make_devices`)::

    RE(ascan([devs.detector], devs.motors["kb_v.pitch"], -5, 5, 20))

Step counts follow BLISS: ``intervals`` gives ``intervals + 1`` points. Relative
plans (``d*``) return every motor to where it started, as BLISS's do. Each plan
records its name and arguments in the start document (``plan_name``,
``plan_args``, and ``beamtwin_plan``), and the motors and the hinted detector
fields in ``motors``/``detectors`` as bluesky's own plans do.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

from bluesky import plan_stubs as bps
from bluesky import plans as bp
from bluesky import preprocessors as bpp
from bluesky.utils import Msg

from controllers.scan_devices import grouped_step

__all__ = ["count", "timescan", "ascan", "dscan", "a2scan", "d2scan", "anscan", "dnscan",
           "amesh", "dmesh", "escan"]

Plan = Generator[Msg, Any, Any]


def _md(name: str, args: dict[str, Any], md: dict[str, Any] | None) -> dict[str, Any]:
    out = {"plan_name": name, "beamtwin_plan": name,
           "plan_args": {k: (repr(v) if hasattr(v, "name") else v) for k, v in args.items()}}
    out.update(md or {})
    return out


def _flat(triples: Sequence[tuple[Any, float, float]]) -> list[Any]:
    out: list[Any] = []
    for m, s, e in triples:
        out += [m, s, e]
    return out


def count(detectors: Sequence[Any], npoints: int = 1, *, md: dict[str, Any] | None = None
          ) -> Plan:
    """*npoints* acquisitions where the beamline stands."""
    return (yield from bp.count(detectors, num=npoints,
                                md=_md("count", {"npoints": npoints}, md)))


def timescan(detectors: Sequence[Any], npoints: int, interval_s: float = 0.0, *,
             wait: Any = None, md: dict[str, Any] | None = None) -> Plan:
    """*npoints* acquisitions, one every *interval_s* seconds (beam drift, stability).

    Parameters
    ----------
    wait : callable, optional
        ``wait(seconds)`` advancing a simulated beamline's clock instead of
        sleeping (the twin in-process); default: the RunEngine sleeps.
    """
    names = [d.name for d in detectors]

    @bpp.stage_decorator(detectors)
    @bpp.run_decorator(md=_md("timescan", {"npoints": npoints, "interval_s": interval_s}, md)
                       | {"detectors": names, "num_points": npoints, "num_intervals": npoints - 1,
                          "hints": {"dimensions": [(["time"], "primary")]}})
    def inner() -> Plan:
        for i in range(npoints):
            if i and interval_s > 0:
                if wait is not None:
                    yield Msg("checkpoint")
                    wait(interval_s)
                else:
                    yield Msg("sleep", None, interval_s)
            yield Msg("checkpoint")
            yield from bps.trigger_and_read(list(detectors))

    return (yield from inner())


def ascan(detectors: Sequence[Any], motor: Any, start: float, stop: float, intervals: int, *,
          md: dict[str, Any] | None = None) -> Plan:
    """Absolute step scan of one motor from *start* to *stop* in *intervals* steps."""
    return (yield from anscan(detectors, [(motor, start, stop)], intervals,
                              md=_md("ascan", {"motor": motor, "start": start, "stop": stop,
                                               "intervals": intervals}, md)))


def dscan(detectors: Sequence[Any], motor: Any, start: float, stop: float, intervals: int, *,
          md: dict[str, Any] | None = None) -> Plan:
    """Relative step scan of one motor; it returns to where it started."""
    return (yield from dnscan(detectors, [(motor, start, stop)], intervals,
                              md=_md("dscan", {"motor": motor, "start": start, "stop": stop,
                                               "intervals": intervals}, md)))


def a2scan(detectors: Sequence[Any], m1: Any, s1: float, e1: float, m2: Any, s2: float,
           e2: float, intervals: int, *, md: dict[str, Any] | None = None) -> Plan:
    """Two motors stepped together (absolute)."""
    return (yield from anscan(detectors, [(m1, s1, e1), (m2, s2, e2)], intervals,
                              md=_md("a2scan", {"m1": m1, "s1": s1, "e1": e1, "m2": m2, "s2": s2,
                                                "e2": e2, "intervals": intervals}, md)))


def d2scan(detectors: Sequence[Any], m1: Any, s1: float, e1: float, m2: Any, s2: float,
           e2: float, intervals: int, *, md: dict[str, Any] | None = None) -> Plan:
    """Two motors stepped together (relative); they return to where they started."""
    return (yield from dnscan(detectors, [(m1, s1, e1), (m2, s2, e2)], intervals,
                              md=_md("d2scan", {"m1": m1, "s1": s1, "e1": e1, "m2": m2, "s2": s2,
                                                "e2": e2, "intervals": intervals}, md)))


def anscan(detectors: Sequence[Any], triples: Sequence[tuple[Any, float, float]],
           intervals: int, *, md: dict[str, Any] | None = None) -> Plan:
    """N motors stepped together (absolute): ``[(motor, start, stop), ...]``."""
    md = md or _md("anscan", {"triples": [(m, s, e) for m, s, e in triples],
                              "intervals": intervals}, None)
    return (yield from bp.scan(detectors, *_flat(triples), num=intervals + 1,
                               per_step=grouped_step, md=md))


def dnscan(detectors: Sequence[Any], triples: Sequence[tuple[Any, float, float]],
           intervals: int, *, md: dict[str, Any] | None = None) -> Plan:
    """N motors stepped together (relative); they return to where they started."""
    md = md or _md("dnscan", {"triples": [(m, s, e) for m, s, e in triples],
                              "intervals": intervals}, None)

    def absolute(here: dict[Any, float]) -> Plan:
        return (yield from bp.scan(detectors, *_flat([(m, here[m] + s, here[m] + e)
                                                      for m, s, e in triples]),
                                   num=intervals + 1, per_step=grouped_step, md=md))

    return (yield from _relative([m for m, _, _ in triples], absolute))


def _relative(motors: Sequence[Any], plan: Any) -> Plan:
    """Run ``plan(here)`` with *here* the motors' positions now; move them back after,
    also after an error or an abort (as BLISS's relative scans do)."""
    here: dict[Any, float] = {}
    for m in motors:
        reading = yield from bps.rd(m)
        here[m] = float(reading)

    def back() -> Plan:
        args: list[Any] = []
        for m in motors:
            args += [m, here[m]]
        yield from bps.mv(*args)

    return (yield from bpp.finalize_wrapper(plan(here), back()))


def amesh(detectors: Sequence[Any], m1: Any, s1: float, e1: float, i1: int, m2: Any, s2: float,
          e2: float, i2: int, *, snake: bool = False, md: dict[str, Any] | None = None) -> Plan:
    """Grid of (*i1* + 1) x (*i2* + 1) points; *m1* is the outer (slow) axis."""
    return (yield from bp.grid_scan(
        detectors, m1, s1, e1, i1 + 1, m2, s2, e2, i2 + 1, snake_axes=snake,
        per_step=grouped_step,
        md=_md("amesh", {"m1": m1, "s1": s1, "e1": e1, "i1": i1, "m2": m2, "s2": s2, "e2": e2,
                         "i2": i2, "snake": snake}, md)))


def dmesh(detectors: Sequence[Any], m1: Any, s1: float, e1: float, i1: int, m2: Any, s2: float,
          e2: float, i2: int, *, snake: bool = False, md: dict[str, Any] | None = None) -> Plan:
    """Relative grid; the motors return to where they started."""
    md = _md("dmesh", {"m1": m1, "s1": s1, "e1": e1, "i1": i1, "m2": m2, "s2": s2, "e2": e2,
                       "i2": i2, "snake": snake}, md)

    def absolute(here: dict[Any, float]) -> Plan:
        return (yield from bp.grid_scan(
            detectors, m1, here[m1] + s1, here[m1] + e1, i1 + 1, m2, here[m2] + s2,
            here[m2] + e2, i2 + 1, snake_axes=snake, per_step=grouped_step, md=md))

    return (yield from _relative([m1, m2], absolute))


def escan(detectors: Sequence[Any], energy: Any, start_eV: float, stop_eV: float,
          intervals: int, *, md: dict[str, Any] | None = None) -> Plan:
    """Energy scan: *energy* (an :class:`~controllers.scan_devices.EnergyAxis`) moves the
    monochromator and the undulator gap follows, at every point."""
    return (yield from bp.scan(detectors, energy, start_eV, stop_eV, num=intervals + 1,
                               md=_md("escan", {"start_eV": start_eV, "stop_eV": stop_eV,
                                                "intervals": intervals}, md)))
