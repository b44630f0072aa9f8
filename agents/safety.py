"""The safety layer between an agent and the motors (shared/RELIABILITY.md).

:class:`SafeBeamline` wraps any :class:`~twin.protocol.MovableBeamline` (the
twin in-process, or EPICS) and implements the same protocol, so an agent
cannot tell it is there until it asks for something unsafe. Every move is
checked, in this order, before anything moves:

1. every name is a motor this run may move (the allowlist);
2. every value is a finite number (NaN passes the motor record's ``<``/``>``);
3. every value lies inside the envelope: the motor's soft limits intersected with
   the configured envelope; an axis without limits is refused;
4. no axis steps further than its step cap (a fraction of its envelope width);
5. the run's move budget and beamline-time limit are not spent.

A refusal raises a typed error that names the axis, the value and what is
allowed, moves nothing, and is recorded in :attr:`SafeBeamline.refusals`.
:meth:`SafeBeamline.return_to_safe` brings every moved axis back to where the
run started, in capped steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from twin.errors import (
    BeamtwinError,
    ConfigError,
    LimitError,
    NonFiniteError,
    UnknownNameError,
)
from twin.observation import Observation
from twin.protocol import MotorInfo, MovableBeamline

__all__ = ["SafetyConfig", "SafeBeamline", "SafetyError", "EnvelopeError", "StepCapError",
           "BudgetError", "DivergenceError"]


class SafetyError(BeamtwinError):
    """A move the safety layer refused (root of the safety errors)."""


class EnvelopeError(LimitError, SafetyError):
    """A target outside the envelope (soft limits intersected with the configured one)."""


class StepCapError(SafetyError, ValueError):
    """A single move longer than the axis' step cap."""


class BudgetError(SafetyError, RuntimeError):
    """The run's move budget or beamline-time limit is spent."""


class DivergenceError(SafetyError, RuntimeError):
    """The figure of merit fell well below where the run started; the beamline was returned."""


@dataclass(frozen=True, kw_only=True)
class SafetyConfig:
    """Limits of one run.

    Parameters
    ----------
    step_cap : float
        Largest single move per axis, as a fraction of the axis' envelope width.
    max_moves : int
        Moves allowed in the run.
    max_time_s : float
        Beamline time allowed in the run, s.
    divergence_ratio : float
        The run diverges when the figure of merit stays below this fraction of its
        value at the start ...
    divergence_count : int
        ... for this many evaluations in a row.
    """

    step_cap: float = 0.25
    max_moves: int = 2000
    max_time_s: float = 4 * 3600.0
    divergence_ratio: float = 0.02
    divergence_count: int = 25

    def __post_init__(self) -> None:
        for name in ("step_cap", "max_time_s", "divergence_ratio"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"SafetyConfig.{name} must be a finite number > 0, "
                                    f"got {v!r}")
        for name in ("max_moves", "divergence_count"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"SafetyConfig.{name} must be an integer >= 1, got {v!r}")


class SafeBeamline:
    """A :class:`~twin.protocol.MovableBeamline` that refuses unsafe moves.

    Parameters
    ----------
    beamline : MovableBeamline
    envelope : mapping of str to (float, float)
        The motors this run may move, with the range each may visit (motor
        units); intersected with the motor's soft limits.
    config : SafetyConfig, optional
    """

    def __init__(self, beamline: MovableBeamline, envelope: Mapping[str, tuple[float, float]],
                 config: SafetyConfig | None = None) -> None:
        self.inner = beamline
        self.config = config or SafetyConfig()
        infos = beamline.motors()
        self._envelope: dict[str, tuple[float, float]] = {}
        for name, (lo, hi) in envelope.items():
            if name not in infos:
                raise UnknownNameError(f"envelope names unknown motor {name!r}; known: "
                                       f"{', '.join(infos)}")
            info = infos[name]
            if not (math.isfinite(info.low) and math.isfinite(info.high)) or \
                    info.low >= info.high or (info.low == 0 and info.high == 0):
                raise EnvelopeError(f"{name}: the motor has no usable soft limits "
                                    f"({info.low}, {info.high}); an axis without limits "
                                    f"cannot be driven by an agent")
            a, b = max(lo, info.low), min(hi, info.high)
            if not (math.isfinite(a) and math.isfinite(b) and a < b):
                raise EnvelopeError(f"{name}: envelope [{lo}, {hi}] does not overlap the soft "
                                    f"limits [{info.low}, {info.high}]")
            self._envelope[name] = (a, b)
        self.start = {n: v for n, v in beamline.positions().items() if n in self._envelope}
        self.moves = 0
        self.refusals: list[dict[str, object]] = []
        self._t0 = beamline.time_s

    # ------------------------------------------------------------------ protocol
    def motors(self) -> dict[str, MotorInfo]:
        """The motors this run may move, with their envelope as limits."""
        infos = self.inner.motors()
        return {n: MotorInfo(n, infos[n].units, lo, hi, infos[n].resolution, infos[n].speed,
                             infos[n].description) for n, (lo, hi) in self._envelope.items()}

    def positions(self) -> dict[str, float]:
        """Readbacks of every motor."""
        return self.inner.positions()

    def acquire(self, exposure_s: float | None = None) -> Observation:
        """Observe (counts against the time limit)."""
        self._check_time()
        return self.inner.acquire(exposure_s)

    @property
    def time_s(self) -> float:
        """Beamline time so far, s."""
        return self.inner.time_s

    def envelope(self, name: str) -> tuple[float, float]:
        """The envelope of motor *name*."""
        return self._envelope[name]

    def step_cap(self, name: str) -> float:
        """The largest single move of motor *name*, motor units."""
        lo, hi = self._envelope[name]
        return self.config.step_cap * (hi - lo)

    def move(self, targets: Mapping[str, float]) -> None:
        """Move, after every check of the module docstring; nothing moves on a refusal."""
        here = self.inner.positions()
        for name, value in targets.items():
            if name not in self._envelope:
                self._refuse(UnknownNameError, name, value,
                             f"motor {name!r} is not in this run's allowlist: "
                             f"{', '.join(self._envelope)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value):
                self._refuse(NonFiniteError, name, value,
                             f"{name}: target {value!r} is not a finite number")
            lo, hi = self._envelope[name]
            if not lo <= value <= hi:
                self._refuse(EnvelopeError, name, value,
                             f"{name}: target {value!r} is outside the envelope [{lo}, {hi}]")
            cap = self.step_cap(name)
            if abs(value - here[name]) > cap * (1 + 1e-9):
                self._refuse(StepCapError, name, value,
                             f"{name}: a move from {here[name]!r} to {value!r} exceeds the "
                             f"step cap of {cap!r}")
        if self.moves >= self.config.max_moves:
            self._refuse(BudgetError, "", None, f"the move budget of {self.config.max_moves} "
                                                f"moves is spent")
        self._check_time()
        self.moves += 1
        self.inner.move(dict(targets))

    def move_stepwise(self, targets: Mapping[str, float]) -> int:
        """Move in as many capped steps as needed; returns the number of moves.

        Each step starts from the readback, so motor-step rounding of the
        intermediate positions never makes the last step longer than the cap.
        """
        moves = 0
        for _ in range(10_000):
            here = self.inner.positions()
            step: dict[str, float] = {}
            for name, value in targets.items():
                if name not in self._envelope or not isinstance(value, (int, float)) or \
                        isinstance(value, bool) or not math.isfinite(value):
                    step[name] = value  # move() refuses it with the right error
                    continue
                reach = 0.999 * self.step_cap(name)
                delta = value - here[name]
                step[name] = value if abs(delta) <= reach else here[name] + math.copysign(
                    reach, delta)
            self.move(step)
            moves += 1
            if all(step[n] == v for n, v in targets.items()):
                return moves
        raise BudgetError("move_stepwise did not converge in 10000 steps")  # pragma: no cover

    def return_to_safe(self) -> None:
        """Every axis this run may move goes back to where the run started."""
        moves_left = self.config.max_moves - self.moves
        if moves_left < 100:
            self.config = replace(self.config, max_moves=self.moves + 100)
        self.move_stepwise(self.start)

    # ------------------------------------------------------------------ internals
    def _check_time(self) -> None:
        if self.inner.time_s - self._t0 > self.config.max_time_s:
            self._refuse(BudgetError, "", None, f"the beamline-time limit of "
                                                f"{self.config.max_time_s} s is spent")

    def _refuse(self, cls: type[BeamtwinError], axis: str, value: object, message: str) -> None:
        self.refusals.append({"type": cls.__name__, "axis": axis, "value": repr(value),
                              "message": message})
        raise cls(message)
