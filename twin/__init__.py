"""beamtwin's physics core: a digital twin of a synchrotron beamline.

Pure physics: no EPICS, no Gymnasium, no RL. The twin is a function of a
frozen beamline description, motor positions, hidden errors and a seed.

Main entry points
-----------------
:func:`default_preset`, :func:`load_preset`
    Beamline descriptions from TOML.
:class:`Twin`
    ``Twin(desc).trace(positions, hidden=..., seed=...) -> Observation``.
:class:`TwinBeamline`
    The twin behind the :class:`MovableBeamline` protocol, with a clock,
    motor speeds, backlash, drift and noise.
:class:`HiddenErrors`
    Seeded misalignment that agents cannot read.
:class:`twin.fast.FastTwin`
    The batched, differentiable torch twin (``backend="fast"`` in :class:`Twin`).
:func:`twin.calibrate.calibrate`
    Fit hidden errors to observations of the real beamline.
"""

from twin.description import BeamlineDescription, MotorSpec
from twin.disturbances import DisturbanceModel, DisturbanceState
from twin.errors import (
    BackendError,
    BeamtwinError,
    ConfigError,
    LimitError,
    NonFiniteError,
    UnknownNameError,
)
from twin.hidden import HiddenErrors
from twin.observation import BeamStats, Observation, Reading
from twin.presets import default_preset, load_preset
from twin.protocol import MotorInfo, MovableBeamline
from twin.simulator import TwinBeamline
from twin.tracer import Twin

__version__ = "0.1.0"

__all__ = [
    "BeamlineDescription", "MotorSpec", "DisturbanceModel", "DisturbanceState",
    "BeamtwinError", "ConfigError", "UnknownNameError", "LimitError", "NonFiniteError",
    "BackendError", "HiddenErrors", "BeamStats", "Observation", "Reading", "default_preset",
    "load_preset", "MotorInfo", "MovableBeamline", "TwinBeamline", "Twin", "__version__",
]
