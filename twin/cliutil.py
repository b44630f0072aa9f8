"""Helpers shared by every command line (``beamtwin`` and ``python -m ioc_sim``).

Every command takes ``--json`` and then prints exactly one JSON document per
result on stdout; on a :class:`~twin.errors.BeamtwinError` it prints
``{"error": ..., "type": ...}`` (or ``error: ...`` on stderr) and exits with 2.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable
from typing import Any

import click

from twin.errors import BeamtwinError

__all__ = ["jsonable", "emit", "run_command", "json_option", "preset_option"]

#: the ``--json`` flag every command takes
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
#: the ``--preset FILE`` option of every command that loads a beamline
preset_option = click.option("--preset", "preset", type=click.Path(dir_okay=False),
                             default=None, help="Beamline preset (TOML); default: built-in.")


def jsonable(v: Any) -> Any:
    """*v* with dataclasses, tuples and non-finite floats made JSON-ready (NaN -> null)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: jsonable(getattr(v, f.name)) for f in dataclasses.fields(v)}
    return v


def emit(as_json: bool, doc: dict[str, Any], text: Callable[[], str], *,
         indent: int | None = 2) -> None:
    """Print *doc* as JSON, or *text()* for people."""
    if as_json:
        click.echo(json.dumps(jsonable(doc), indent=indent, allow_nan=False))
    else:
        click.echo(text())


def run_command(as_json: bool, fn: Callable[[], None]) -> None:
    """Run a command body; turn beamtwin errors into a clear message and exit 2."""
    try:
        fn()
    except BeamtwinError as exc:
        if as_json:
            doc = {"error": str(exc), "type": type(exc).__name__}
            for key in ("field", "reason"):  # a refused request names its field
                if isinstance(getattr(exc, key, None), str):
                    doc[key] = getattr(exc, key)
            click.echo(json.dumps(doc))
        else:
            click.echo(f"error: {exc}", err=True)
        sys.exit(2)
