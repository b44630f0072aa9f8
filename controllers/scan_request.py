"""Scan requests: parsed and checked before anything moves (RELIABILITY.md R11).

A scan request comes from the command line (``beamtwin scan ascan kb_v.pitch -5
5 20``), from a script or a queue as a dict, or from JSON. :func:`parse_args`
turns the command line into the dict form; :meth:`ScanRequest.from_dict` checks
every field (type, range, known names, missing and extra fields) and
:meth:`ScanRequest.check_trajectory` checks every point of the scan against the
motors' envelopes. Each refusal is a :class:`ScanRequestError` that names the
field and the reason, raised before any device is touched.

Plans and their positional arguments (BLISS order; ``INTERVALS`` gives
``INTERVALS + 1`` points):

==========  ==========================================  ==============================
plan        arguments                                   what it does
==========  ==========================================  ==============================
count       ``[NPOINTS]``                               acquisitions where it stands
timescan    ``NPOINTS [INTERVAL_S]``                    acquisitions at a fixed period
ascan       ``MOTOR START STOP INTERVALS``              absolute step scan
dscan       ``MOTOR START STOP INTERVALS``              relative step scan, then back
a2scan      ``M1 S1 E1 M2 S2 E2 INTERVALS``             two motors in step
d2scan      same as a2scan                              relative, then back
anscan      ``M1 S1 E1 [M2 S2 E2 ...] INTERVALS``       N motors in step
dnscan      same as anscan                              relative, then back
amesh       ``M1 S1 E1 I1 M2 S2 E2 I2``                 grid; M1 outer (slow), M2 inner
dmesh       same as amesh                               relative, then back
escan       ``START_EV STOP_EV INTERVALS``              energy; the undulator gap follows
gpscan      ``M1 S1 E1 M2 S2 E2 NPOINTS``               adaptive Gaussian-process map
c2fmap      ``M1 S1 E1 M2 S2 E2 COARSE FINE``           coarse map, then fine maps of ROIs
==========  ==========================================  ==============================
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from twin.errors import ConfigError

__all__ = ["ScanRequestError", "ScanRequest", "parse_args", "PLANS", "MAX_POINTS",
           "MAX_INTERVALS", "GOTO", "FITS"]

#: every plan the command line knows
PLANS = ("count", "timescan", "ascan", "dscan", "a2scan", "d2scan", "anscan", "dnscan",
         "amesh", "dmesh", "escan", "gpscan", "c2fmap")
RELATIVE = ("dscan", "d2scan", "dnscan", "dmesh")
STEP_PLANS = ("ascan", "dscan", "a2scan", "d2scan", "anscan", "dnscan", "escan")
MAP_PLANS = ("amesh", "dmesh", "gpscan", "c2fmap")
#: the most points one scan may take
MAX_POINTS = 100_000
#: the most intervals along one axis
MAX_INTERVALS = 10_000
GOTO = ("cen", "com", "max", "min")
FITS = ("none", "gaussian", "lorentzian", "erf")
_KEYS = {"plan", "motors", "start", "stop", "intervals", "npoints", "interval_s", "exposure_s",
         "detector", "signal", "goto", "fit", "snake", "coarse_step", "fine_step", "seed"}
_NARGS = {"ascan": 1, "dscan": 1, "a2scan": 2, "d2scan": 2}


class ScanRequestError(ConfigError):
    """A scan request refused before anything moved.

    Attributes
    ----------
    field : str
        The request field at fault (``"plan"``, ``"motors[1]"``, ``"intervals"``, ...).
    reason : str
    """

    def __init__(self, field_: str, reason: str) -> None:
        super().__init__(f"scan request field {field_!r}: {reason}")
        self.field, self.reason = field_, reason


def _num(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScanRequestError(name, f"must be a number, got {value!r} "
                                     f"({type(value).__name__})")
    if not math.isfinite(value) or abs(value) > 1e12:
        raise ScanRequestError(name, f"must be a finite number within +-1e12, got {value!r}")
    return float(value)


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ScanRequestError(name, f"must be an integer, got {value!r} "
                                         f"({type(value).__name__})")
    if not lo <= value <= hi:
        raise ScanRequestError(name, f"must lie in [{lo}, {hi}], got {value}")
    return int(value)


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ScanRequestError(name, f"must be a non-empty string, got {value!r}")
    return value


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise ScanRequestError(name, f"must be a list, got {value!r} ({type(value).__name__})")
    return list(value)


@dataclass(frozen=True, kw_only=True)
class ScanRequest:
    """One checked scan request (every field validated by :meth:`from_dict`).

    Attributes
    ----------
    plan : str
        One of :data:`PLANS`.
    motors : tuple of str
        Motors scanned (``("energy",)`` for escan; empty for count/timescan).
    start, stop : tuple of float
        Per motor, motor units (eV for escan); relative plans: offsets from
        where each motor stands.
    intervals : tuple of int
        Step scans: one entry (all motors step together); meshes: one per motor.
    npoints : int
        count/timescan: acquisitions; gpscan: the point budget.
    interval_s : float
        timescan: period between acquisitions, s.
    exposure_s : float or None
        Exposure per point, s (None: the detector's default).
    detector : str
        The diagnostic whose field is the scan's signal, or ``"xrf"`` (the
        specimen's signal under the focus).
    signal : str
        Field of that diagnostic: flux, x_um, y_um, fwhm_x_um or fwhm_y_um.
    goto : str or None
        Move to this result after the scan: cen, com, max or min.
    fit : str
        none, gaussian, lorentzian or erf (knife edge).
    snake : bool
        Meshes: reverse the inner axis on every other row.
    coarse_step, fine_step : float
        c2fmap: step of the coarse and of the fine maps, motor units.
    seed : int
        Seeds the adaptive routines.
    """

    plan: str
    motors: tuple[str, ...] = ()
    start: tuple[float, ...] = ()
    stop: tuple[float, ...] = ()
    intervals: tuple[int, ...] = ()
    npoints: int = 1
    interval_s: float = 0.0
    exposure_s: float | None = None
    detector: str = "detector"
    signal: str = "flux"
    goto: str | None = None
    fit: str = "none"
    snake: bool = False
    coarse_step: float = 0.0
    fine_step: float = 0.0
    seed: int = 0

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_dict(cls, d: Any) -> ScanRequest:
        """Check every field of *d*; raise :class:`ScanRequestError` naming the first bad one."""
        if not isinstance(d, Mapping):
            raise ScanRequestError("request", f"must be a mapping, got {type(d).__name__}")
        extra = sorted(str(k) for k in d if k not in _KEYS)
        if extra:
            raise ScanRequestError(extra[0], f"unknown field; allowed: {', '.join(sorted(_KEYS))}")
        if "plan" not in d:
            raise ScanRequestError("plan", "missing; one of " + ", ".join(PLANS))
        plan = _str(d["plan"], "plan")
        if plan not in PLANS:
            raise ScanRequestError("plan", f"unknown plan {plan!r}; one of {', '.join(PLANS)}")
        kw: dict[str, Any] = {"plan": plan}
        need_motors = plan not in ("count", "timescan")
        if need_motors:
            if plan == "escan":
                motors = ["energy"]
                if "motors" in d and list(_list(d["motors"], "motors")) not in ([], ["energy"]):
                    raise ScanRequestError("motors", "escan scans the energy only")
            else:
                motors = [_str(m, f"motors[{i}]")
                          for i, m in enumerate(_list(_need(d, "motors", plan), "motors"))]
            n = len(motors)
            want = _NARGS.get(plan) or (2 if plan in MAP_PLANS else None)
            if want is not None and n != want:
                raise ScanRequestError("motors", f"{plan} takes {want} motor(s), got {n}")
            if n < 1 or n > 16:
                raise ScanRequestError("motors", f"takes 1 to 16 motors, got {n}")
            if len(set(motors)) != n:
                raise ScanRequestError("motors", f"a motor appears twice: {motors}")
            starts = _list(_need(d, "start", plan), "start")
            stops = _list(_need(d, "stop", plan), "stop")
            for nm, vals in (("start", starts), ("stop", stops)):
                if len(vals) != n:
                    raise ScanRequestError(nm, f"needs {n} value(s), one per motor, "
                                               f"got {len(vals)}")
            kw["motors"] = tuple(motors)
            kw["start"] = tuple(_num(v, f"start[{i}]") for i, v in enumerate(starts))
            kw["stop"] = tuple(_num(v, f"stop[{i}]") for i, v in enumerate(stops))
            if plan == "escan":
                for nm in ("start", "stop"):
                    e = kw[nm][0]
                    if not 100.0 <= e <= 200_000.0:
                        raise ScanRequestError(nm, f"photon energy {e} eV is out of range "
                                                   f"[100, 200000] eV")
            if plan in STEP_PLANS or plan in ("amesh", "dmesh"):
                iv = _list(_need(d, "intervals", plan), "intervals")
                want_iv = n if plan in ("amesh", "dmesh") else 1
                if len(iv) != want_iv:
                    raise ScanRequestError("intervals", f"{plan} needs {want_iv} value(s), "
                                                        f"got {len(iv)}")
                kw["intervals"] = tuple(_int(v, f"intervals[{i}]", 1, MAX_INTERVALS)
                                        for i, v in enumerate(iv))
                total = int(np.prod([i + 1 for i in kw["intervals"]]))
                if total > MAX_POINTS:
                    raise ScanRequestError("intervals", f"{total} points exceed the limit of "
                                                        f"{MAX_POINTS}")
        elif "motors" in d and _list(d["motors"], "motors"):
            raise ScanRequestError("motors", f"{plan} moves no motor")
        if plan in ("count", "timescan", "gpscan"):
            default = 1 if plan == "count" else None
            if "npoints" not in d and default is None:
                raise ScanRequestError("npoints", f"missing; {plan} needs it")
            lo = 10 if plan == "gpscan" else 1
            kw["npoints"] = _int(d.get("npoints", default), "npoints", lo, MAX_POINTS)
        if "interval_s" in d:
            v = _num(d["interval_s"], "interval_s")
            if not 0 <= v <= 86_400:
                raise ScanRequestError("interval_s", f"must lie in [0, 86400] s, got {v}")
            kw["interval_s"] = v
        if d.get("exposure_s") is not None:
            v = _num(d["exposure_s"], "exposure_s")
            if not 1e-6 <= v <= 3600:
                raise ScanRequestError("exposure_s", f"must lie in [1e-6, 3600] s, got {v}")
            kw["exposure_s"] = v
        kw["detector"] = _str(d.get("detector", "detector"), "detector")
        kw["signal"] = _str(d.get("signal", "flux"), "signal")
        if kw["detector"] == "xrf" and "signal" in d and d["signal"] not in ("flux", "xrf"):
            raise ScanRequestError("signal", "the xrf detector has one signal (its counts)")
        if kw["signal"] not in ("flux", "x_um", "y_um", "fwhm_x_um", "fwhm_y_um", "xrf"):
            raise ScanRequestError("signal", f"unknown field {kw['signal']!r}; one of flux, "
                                             f"x_um, y_um, fwhm_x_um, fwhm_y_um")
        goto = d.get("goto")
        if goto is not None:
            goto = _str(goto, "goto")
            if goto not in GOTO:
                raise ScanRequestError("goto", f"must be one of {', '.join(GOTO)}, got {goto!r}")
            if plan in ("count", "timescan"):
                raise ScanRequestError("goto", f"{plan} moves no motor, there is nowhere to go")
            kw["goto"] = goto
        fit = _str(d.get("fit", "none"), "fit")
        if fit not in FITS:
            raise ScanRequestError("fit", f"must be one of {', '.join(FITS)}, got {fit!r}")
        kw["fit"] = fit
        snake = d.get("snake", False)
        if not isinstance(snake, bool):
            raise ScanRequestError("snake", f"must be true or false, got {snake!r}")
        kw["snake"] = snake
        if plan == "c2fmap":
            for nm in ("coarse_step", "fine_step"):
                v = _num(_need(d, nm, plan), nm)
                if v <= 0:
                    raise ScanRequestError(nm, f"must be > 0, got {v}")
                kw[nm] = v
            if kw["fine_step"] >= kw["coarse_step"]:
                raise ScanRequestError("fine_step", f"must be smaller than coarse_step "
                                                    f"({kw['coarse_step']}), got {kw['fine_step']}")
        if "seed" in d:
            kw["seed"] = _int(d["seed"], "seed", 0, 2**32 - 1)
        req = cls(**kw)
        if plan in MAP_PLANS:
            for i in range(2):
                if req.start[i] == req.stop[i]:
                    raise ScanRequestError(f"stop[{i}]", "a map needs start != stop on each axis")
        if plan == "c2fmap":
            span = max(abs(req.stop[i] - req.start[i]) for i in range(2))
            fine = int(np.prod([abs(req.stop[i] - req.start[i]) / req.fine_step + 1
                                for i in range(2)]))
            if span / req.coarse_step < 2:
                raise ScanRequestError("coarse_step", f"gives fewer than 3 coarse points over "
                                                      f"{span}")
            if fine > MAX_POINTS:
                raise ScanRequestError("fine_step", f"a full fine map would have {fine} points, "
                                                    f"over the limit of {MAX_POINTS}")
        return req

    def to_dict(self) -> dict[str, Any]:
        """The request as JSON-ready data (:meth:`from_dict` reads it back)."""
        d = asdict(self)
        for k in ("motors", "start", "stop", "intervals"):
            d[k] = list(d[k])
        return d

    # ------------------------------------------------------------------ geometry
    @property
    def relative(self) -> bool:
        """True for dscan, d2scan, dnscan and dmesh."""
        return self.plan in RELATIVE

    @property
    def signal_field(self) -> str:
        """The event field the scan analyses."""
        return "xrf" if self.detector == "xrf" else f"{self.detector}_{self.signal}"

    def points(self, here: Mapping[str, float] | None = None) -> np.ndarray:
        """Every point of a step scan or mesh, absolute motor units, shape (N, motors).

        Relative plans need *here* (the motors' readbacks). count/timescan give
        shape (npoints, 0); the adaptive routines give their bounding box corners.
        """
        here = here or {}
        base = np.array([here.get(m, 0.0) if self.relative else 0.0 for m in self.motors])
        s, e = np.array(self.start) + base, np.array(self.stop) + base
        if self.plan in ("count", "timescan"):
            return np.zeros((self.npoints, 0))
        if self.plan in STEP_PLANS:
            t = np.linspace(0.0, 1.0, self.intervals[0] + 1)[:, None]
            return s[None, :] + t * (e - s)[None, :]
        if self.plan in ("amesh", "dmesh"):
            a = np.linspace(s[0], e[0], self.intervals[0] + 1)
            b = np.linspace(s[1], e[1], self.intervals[1] + 1)
            return np.array([(x, y) for x in a for y in b])
        return np.array([[s[0], s[1]], [e[0], e[1]], [s[0], e[1]], [e[0], s[1]]])

    def check_trajectory(self, check: Any, here: Mapping[str, float]) -> int:
        """Check every point with *check* (``{motor: value} -> None``, raising on a refusal);
        returns the number of points. Refusals become :class:`ScanRequestError`."""
        pts = self.points(here)
        if pts.shape[1] == 0:
            return len(pts)
        for j, m in enumerate(self.motors):
            col = pts[:, j]
            for v, which in ((float(col.min()), "lowest"), (float(col.max()), "highest")):
                try:
                    check({m: v})
                except KeyError as exc:  # a motor this scan may not move
                    raise ScanRequestError(f"motors[{j}]", str(exc)) from None
                except ValueError as exc:  # outside the envelope, or not finite
                    name = "stop" if (self.stop[j] >= self.start[j]) == (which == "highest") \
                        else "start"
                    raise ScanRequestError(f"{name}[{j}]", f"the scan's {which} {m} point "
                                                            f"{v!r} is refused: {exc}") from None
        return len(pts)


def _need(d: Mapping[str, Any], key: str, plan: str) -> Any:
    if key not in d:
        raise ScanRequestError(key, f"missing; {plan} needs it")
    return d[key]


def _float_arg(tok: str, name: str) -> float:
    try:
        return float(tok)
    except ValueError:
        raise ScanRequestError(name, f"{tok!r} is not a number") from None


def _int_arg(tok: str, name: str) -> int:
    try:
        return int(tok)
    except ValueError:
        raise ScanRequestError(name, f"{tok!r} is not an integer") from None


def parse_args(plan: str, args: Sequence[str]) -> dict[str, Any]:
    """The dict form of a command-line scan (positional arguments as in the module table)."""
    a = list(args)
    if plan not in PLANS:
        raise ScanRequestError("plan", f"unknown plan {plan!r}; one of {', '.join(PLANS)}")

    def take(n: int, usage: str) -> None:
        if len(a) != n:
            raise ScanRequestError("args", f"{plan} takes {usage}, got {len(a)} argument(s): "
                                           f"{' '.join(a) or '(none)'}")

    d: dict[str, Any] = {"plan": plan}
    if plan == "count":
        if len(a) > 1:
            take(1, "[NPOINTS]")
        if a:
            d["npoints"] = _int_arg(a[0], "npoints")
    elif plan == "timescan":
        if len(a) not in (1, 2):
            take(1, "NPOINTS [INTERVAL_S]")
        d["npoints"] = _int_arg(a[0], "npoints")
        if len(a) == 2:
            d["interval_s"] = _float_arg(a[1], "interval_s")
    elif plan in ("ascan", "dscan", "a2scan", "d2scan", "anscan", "dnscan"):
        n = _NARGS.get(plan)
        if n is not None:
            take(3 * n + 1, " ".join(f"M{i} S{i} E{i}" for i in range(1, n + 1)) + " INTERVALS")
        elif len(a) < 4 or (len(a) - 1) % 3:
            raise ScanRequestError("args", f"{plan} takes M1 S1 E1 [M2 S2 E2 ...] INTERVALS, "
                                           f"got {len(a)} argument(s)")
        triples = [a[i:i + 3] for i in range(0, len(a) - 1, 3)]
        d["motors"] = [t[0] for t in triples]
        d["start"] = [_float_arg(t[1], f"start[{i}]") for i, t in enumerate(triples)]
        d["stop"] = [_float_arg(t[2], f"stop[{i}]") for i, t in enumerate(triples)]
        d["intervals"] = [_int_arg(a[-1], "intervals")]
    elif plan in ("amesh", "dmesh"):
        take(8, "M1 S1 E1 I1 M2 S2 E2 I2")
        d["motors"] = [a[0], a[4]]
        d["start"] = [_float_arg(a[1], "start[0]"), _float_arg(a[5], "start[1]")]
        d["stop"] = [_float_arg(a[2], "stop[0]"), _float_arg(a[6], "stop[1]")]
        d["intervals"] = [_int_arg(a[3], "intervals[0]"), _int_arg(a[7], "intervals[1]")]
    elif plan == "escan":
        take(3, "START_EV STOP_EV INTERVALS")
        d["start"] = [_float_arg(a[0], "start[0]")]
        d["stop"] = [_float_arg(a[1], "stop[0]")]
        d["intervals"] = [_int_arg(a[2], "intervals")]
    else:  # gpscan, c2fmap
        usage = "M1 S1 E1 M2 S2 E2 " + ("NPOINTS" if plan == "gpscan" else "COARSE FINE")
        take(7 if plan == "gpscan" else 8, usage)
        d["motors"] = [a[0], a[3]]
        d["start"] = [_float_arg(a[1], "start[0]"), _float_arg(a[4], "start[1]")]
        d["stop"] = [_float_arg(a[2], "stop[0]"), _float_arg(a[5], "stop[1]")]
        if plan == "gpscan":
            d["npoints"] = _int_arg(a[6], "npoints")
        else:
            d["coarse_step"] = _float_arg(a[6], "coarse_step")
            d["fine_step"] = _float_arg(a[7], "fine_step")
    return d
