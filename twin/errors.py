"""The one exception root of beamtwin, with stdlib dual inheritance.

Every error beamtwin raises derives from :class:`BeamtwinError`, and also from
the stdlib type a caller would naturally catch (``ValueError`` for bad values,
``KeyError`` for unknown names). Messages name the offending value and what is
allowed, so that the person reading them knows what to do next.
"""

from __future__ import annotations

__all__ = [
    "BeamtwinError",
    "ConfigError",
    "UnknownNameError",
    "LimitError",
    "NonFiniteError",
    "BackendError",
]


class BeamtwinError(Exception):
    """Root of every error raised by beamtwin."""


class ConfigError(ValueError, BeamtwinError):
    """A beamline description (preset) is malformed or inconsistent."""


class UnknownNameError(KeyError, BeamtwinError):
    """An unknown motor, element, diagnostic or backend name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class LimitError(ValueError, BeamtwinError):
    """A requested motor position lies outside the motor's soft limits."""


class NonFiniteError(ValueError, BeamtwinError):
    """A requested value is NaN, infinite or not a number at all."""


class BackendError(RuntimeError, BeamtwinError):
    """A tracing backend failed or is not available."""
