"""The correctors a stabilisation loop can run, behind one small protocol.

Every corrector sees one :class:`~agents.stabilize.plant.Reading` per loop
period and returns the knob settings (:data:`~agents.stabilize.plant.KNOBS`
order, changes from the aligned positions, inside the envelope):

``none``
    Leaves every knob where it is.
``fb``
    Feedback only: a PI loop per quantity on what the sample diagnostic
    measures, the horizontal and vertical position through the KB pitches and
    the vertical size through the coupling knob. Gains come from the measured
    knob response and a tuning on training schedules (:func:`tune_feedback`).
``table``
    The facilities' feed-forward lookup table (:class:`~agents.stabilize.models.LookupTable`)
    on the ring's source knobs.
``ff_nn``, ``ff_gp``
    Learned feed-forward (MLP, Gaussian process) on the source knobs.
``ff_fb``
    The better learned feed-forward plus slow feedback on the sample.
``rl``
    A stable-baselines3 policy (:mod:`agents.stabilize.rl`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agents.stabilize.calibration import Calibration, features
from agents.stabilize.models import FeedForwardModel, GPModel
from agents.stabilize.plant import KNOBS, Reading
from twin.errors import ConfigError

__all__ = ["CORRECTORS", "Corrector", "NoCorrection", "FeedbackGains", "Feedback", "FeedForward",
           "clip_knobs"]

#: corrector names, in the order of the benchmark's table
CORRECTORS: tuple[str, ...] = ("none", "fb", "table", "ff_nn", "ff_gp", "ff_fb", "rl")
_KB_H, _KB_V, _COUPLING = KNOBS.index("kb_h.pitch"), KNOBS.index("kb_v.pitch"), \
    KNOBS.index("undulator.coupling")


class Corrector(Protocol):
    """What a stabilisation loop runs once per period."""

    name: str

    def reset(self) -> None:
        """Forget the past (a new run starts with the beamline aligned)."""

    def act(self, reading: Reading) -> np.ndarray:
        """Knob settings for this period's *reading* (:data:`KNOBS` order)."""


def clip_knobs(values: np.ndarray, limits: Mapping[str, float]) -> np.ndarray:
    """*values* clipped into each knob's envelope (a saturating corrector)."""
    lim = np.array([limits[k] for k in KNOBS])
    return np.clip(values, -lim, lim)


class NoCorrection:
    """The ``none`` corrector."""

    name = "none"

    def reset(self) -> None:  # noqa: D102
        pass

    def act(self, reading: Reading) -> np.ndarray:  # noqa: D102
        return np.zeros(len(KNOBS))


@dataclass(frozen=True)
class FeedbackGains:
    """PI gains, per reading of the sample diagnostic, of the three feedback loops.

    ``ki`` is the fraction of the measured error the integrator removes per
    reading (``ki_size`` for the size); ``kp`` adds a proportional part. Noise
    and the pace of the disturbance set the best values.
    """

    kp: float = 0.0
    ki: float = 0.1
    ki_size: float = 0.05

    def __post_init__(self) -> None:
        for k in ("kp", "ki", "ki_size"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and 0 <= v <= 1):
                raise ConfigError(f"feedback gain {k} must lie in [0, 1], got {v!r}")


class Feedback:
    """PI feedback on the sample: x by KB-H pitch, y by KB-V pitch, size by coupling.

    Parameters
    ----------
    response : ndarray, shape (6, 8)
        Measured knob response (:attr:`Calibration.response`).
    gains : FeedbackGains
    limits : mapping
        Knob envelopes.
    name : str
    """

    def __init__(self, response: np.ndarray, gains: FeedbackGains, limits: Mapping[str, float],
                 name: str = "fb") -> None:
        self.name = name
        self.gains = gains
        self.limits = dict(limits)
        self._g = np.array([response[0, _KB_H], response[1, _KB_V], response[3, _COUPLING]])
        if not np.all(np.abs(self._g) > 0):
            raise ConfigError("the knob response gives a feedback knob no effect on its quantity")
        self.reset()

    def reset(self) -> None:  # noqa: D102
        self._integral = np.zeros(3)

    def correction(self, reading: Reading, base: np.ndarray) -> np.ndarray:
        """Feedback's part given the other knobs' settings *base* (for anti-windup)."""
        e = reading.measured[[0, 1, 3]]
        step = -e / self._g
        ki = np.array([self.gains.ki, self.gains.ki, self.gains.ki_size])
        if reading.fresh:  # integrate each reading of the sample diagnostic once
            self._integral += ki * step
        out = np.zeros(len(KNOBS))
        cols = [_KB_H, _KB_V, _COUPLING]
        lim = np.array([self.limits[KNOBS[c]] for c in cols])
        # anti-windup: the integrator stays where its knob can still follow
        self._integral = np.clip(self._integral, -lim - base[cols], lim - base[cols])
        kp = np.array([self.gains.kp, self.gains.kp, 0.0])
        out[cols] = self._integral + kp * step
        return out

    def act(self, reading: Reading) -> np.ndarray:  # noqa: D102
        base = np.zeros(len(KNOBS))
        return clip_knobs(base + self.correction(reading, base), self.limits)


class FeedForward:
    """Feed-forward from a gap model, optionally with slow feedback on top.

    Parameters
    ----------
    model : FeedForwardModel
    calibration : Calibration
        For the gap ranges the model's inputs are scaled by.
    limits : mapping
        Knob envelopes.
    feedback : Feedback, optional
        Slow feedback added to the feed-forward (``ff_fb``).
    name : str
    trust_std : float
        A Gaussian process's predictive standard deviation (units of the
        largest calibrated correction) above which its correction fades out,
        reaching none at twice this.
    """

    def __init__(self, model: FeedForwardModel, calibration: Calibration,
                 limits: Mapping[str, float], *, feedback: Feedback | None = None,
                 name: str = "ff", trust_std: float = 0.3) -> None:
        self.name = name
        self.model = model
        self.cal = calibration
        self.limits = dict(limits)
        self.feedback = feedback
        self.trust_std = trust_std
        self.last_std = 0.0
        self.reset()

    def reset(self) -> None:  # noqa: D102
        if self.feedback is not None:
            self.feedback.reset()

    def feed_forward(self, reading: Reading) -> np.ndarray:
        """The model's knob settings for this period's gaps (:data:`KNOBS` order)."""
        x = features(reading.gap_mm, reading.gap_direction, reading.neighbour_mm,
                     reading.neighbour_direction, self.cal.gap_range, self.cal.neighbour_range)
        out = np.zeros(len(KNOBS))
        if isinstance(self.model, GPModel):
            mean, std = self.model.predict_with_std(x)
            self.last_std = float(std)
            fade = float(np.clip(2.0 - float(std) / self.trust_std, 0.0, 1.0))
            out[:5] = mean * fade
        else:
            out[:5] = self.model.predict(x)
        return out

    def act(self, reading: Reading) -> np.ndarray:  # noqa: D102
        out = self.feed_forward(reading)
        if self.feedback is not None:
            out = out + self.feedback.correction(reading, out)
        return clip_knobs(out, self.limits)
