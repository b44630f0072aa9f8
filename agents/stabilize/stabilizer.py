"""A fitted stabiliser: calibration, feed-forward models and tuned gains, in one file.

``beamtwin stabilize calibrate`` writes it (JSON); ``beamtwin stabilize run``
and ``bench`` read it. :meth:`Stabilizer.corrector` builds any corrector of
:data:`~agents.stabilize.correctors.CORRECTORS` but ``rl`` from it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agents.stabilize.calibration import Calibration
from agents.stabilize.correctors import (
    Corrector,
    Feedback,
    FeedbackGains,
    FeedForward,
    NoCorrection,
)
from agents.stabilize.evaluate import tune_feedback
from agents.stabilize.models import MODEL_KINDS, FeedForwardModel, fit_model, model_from_dict
from agents.stabilize.plant import StabilizePlant
from agents.stabilize.schedules import GapSchedule
from twin.errors import ConfigError

__all__ = ["Stabilizer", "fit_stabilizer", "FILE_VERSION", "MODEL_CORRECTORS"]

FILE_VERSION = 1
#: correctors a stabiliser file can build (``rl`` needs a policy)
MODEL_CORRECTORS = ("none", "fb", "table", "ff_nn", "ff_gp", "ff_fb")


@dataclass
class Stabilizer:
    """Everything a stabilisation loop needs from its calibration.

    Attributes
    ----------
    beamline : str
        Name of the beamline description it was calibrated on.
    calibration : Calibration
    models : dict of str to FeedForwardModel
        ``"table"``, ``"nn"``, ``"gp"``.
    fb_gains : FeedbackGains
        Feedback alone.
    ff_fb_model : str
        The learned model paired with slow feedback (``"nn"`` or ``"gp"``).
    ff_fb_gains : FeedbackGains
        Its slow feedback.
    tuning : dict
        Scores of the tuning, for the record.
    """

    beamline: str
    calibration: Calibration
    models: dict[str, FeedForwardModel]
    fb_gains: FeedbackGains
    ff_fb_model: str
    ff_fb_gains: FeedbackGains
    tuning: dict[str, Any]

    def corrector(self, name: str, limits: Mapping[str, float]) -> Corrector:
        """The corrector *name* (:data:`MODEL_CORRECTORS`)."""
        cal = self.calibration
        if name == "none":
            return NoCorrection()
        if name == "fb":
            return Feedback(cal.response, self.fb_gains, limits, name="fb")
        if name == "table":
            return FeedForward(self.models["table"], cal, limits, name="table")
        if name in ("ff_nn", "ff_gp"):
            return FeedForward(self.models[name[3:]], cal, limits, name=name)
        if name == "ff_fb":
            return FeedForward(self.models[self.ff_fb_model], cal, limits, name="ff_fb",
                               feedback=Feedback(cal.response, self.ff_fb_gains, limits))
        raise ConfigError(f"unknown corrector {name!r}; a stabiliser file gives: "
                          f"{', '.join(MODEL_CORRECTORS)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"version": FILE_VERSION, "beamline": self.beamline,
                "calibration": self.calibration.to_dict(),
                "models": {k: m.to_dict() for k, m in self.models.items()},
                "fb_gains": asdict(self.fb_gains), "ff_fb_model": self.ff_fb_model,
                "ff_fb_gains": asdict(self.ff_fb_gains), "tuning": self.tuning}

    def save(self, path: str | Path) -> Path:
        """Write to *path* (JSON); returns the path."""
        p = Path(path)
        p.write_text(json.dumps(self.to_dict()))
        return p

    @classmethod
    def load(cls, path: str | Path) -> Stabilizer:
        """Read a file written by :meth:`save`.

        Raises
        ------
        ConfigError
            If the file is missing, not JSON or not a stabiliser of this version.
        """
        p = Path(path)
        try:
            doc = json.loads(p.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"no stabiliser file at {str(p)!r}; write one with "
                              "'beamtwin stabilize calibrate --out FILE'") from exc
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read stabiliser file {str(p)!r}: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("version") != FILE_VERSION:
            raise ConfigError(f"{str(p)!r} is not a stabiliser file of version {FILE_VERSION}")
        try:
            return cls(beamline=str(doc["beamline"]),
                       calibration=Calibration.from_dict(doc["calibration"]),
                       models={k: model_from_dict(v) for k, v in doc["models"].items()},
                       fb_gains=FeedbackGains(**doc["fb_gains"]),
                       ff_fb_model=str(doc["ff_fb_model"]),
                       ff_fb_gains=FeedbackGains(**doc["ff_fb_gains"]),
                       tuning=dict(doc.get("tuning", {})))
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"stabiliser file {str(p)!r} lacks {exc}") from exc


def fit_stabilizer(plant: StabilizePlant, cal: Calibration, train: Sequence[GapSchedule], *,
                   seed: int = 0, progress: Callable[[str], None] | None = None) -> Stabilizer:
    """Fit the three feed-forward models to *cal* and tune the feedback on *train*.

    The feedback gains of ``fb`` and of ``ff_fb`` are tuned separately, and
    ``ff_fb`` takes the learned model (MLP or GP) that scores better with its
    feedback, all on the *train* schedules.
    """
    say = progress or (lambda _m: None)
    lim = plant.config.knob_limits
    models: dict[str, FeedForwardModel] = {}
    fit_s: dict[str, float] = {}
    import time

    for kind in MODEL_KINDS:
        t0 = time.perf_counter()
        models[kind] = fit_model(kind, cal, seed=seed)
        fit_s[kind] = time.perf_counter() - t0
    say("tuning the feedback gains on the training schedules")
    fb_gains, fb_score = tune_feedback(plant, train, lambda g: Feedback(cal.response, g, lim))
    choice: dict[str, tuple[FeedbackGains, float]] = {}
    for kind in ("nn", "gp"):
        say(f"tuning slow feedback on top of the {kind} feed-forward")
        choice[kind] = tune_feedback(
            plant, train, lambda g, k=kind: FeedForward(models[k], cal, lim,
                                                        feedback=Feedback(cal.response, g, lim)))
    best = min(choice, key=lambda k: choice[k][1])
    tuning = {"fit_s": fit_s, "fb_train_score": fb_score,
              "ff_fb_train_scores": {k: v[1] for k, v in choice.items()},
              "train_schedules": [s.name for s in train]}
    return Stabilizer(beamline=plant.desc.name, calibration=cal, models=models,
                      fb_gains=fb_gains, ff_fb_model=best, ff_fb_gains=choice[best][0],
                      tuning=tuning)
