"""Helpers shared by every command line (``beamtwin`` and ``python -m ioc_sim``).

Every command takes ``--json`` and then prints exactly one JSON document per
result on stdout; on a :class:`~twin.errors.BeamtwinError` it prints
``{"error": ..., "type": ...}`` (or ``error: ...`` on stderr) and exits with 2.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from twin.errors import BeamtwinError, ConfigError

__all__ = ["jsonable", "emit", "run_command", "json_option", "preset_option", "SEED",
           "check_writable", "check_device"]

#: the type of every ``--seed``: numpy seeds are integers in [0, 2**32 - 1]
SEED = click.IntRange(0, 2 ** 32 - 1)

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


def check_writable(path: str | Path, option: str, *, folder: bool = False,
                   picture: bool = False) -> Path:
    """Refuse an output that cannot be written, before any work is done.

    With ``folder=True`` creates *path* (a folder) if it is missing; a file's
    folder must exist. Then writes and removes a probe file in it, so a read-only
    or full file system, or a parent that is a file, fails here with a message
    that names the option, not after an hour's benchmark. With ``picture=True``
    the name must also end in a picture format's suffix (``.png`` ...).

    Raises
    ------
    ConfigError
        Naming *option*, the path and the reason.
    """
    target = Path(path)
    if picture:
        from twin.plotting import PICTURE_FORMATS

        if target.suffix.lstrip(".").lower() not in PICTURE_FORMATS:
            raise ConfigError(f"{option} {str(path)!r}: a picture's name must end in one of "
                              f"{', '.join('.' + f for f in PICTURE_FORMATS)}")
    where = target if folder else (target.parent if str(target.parent) else Path("."))
    if not folder and target.is_dir():
        raise ConfigError(f"{option} {str(path)!r} is a folder; give a file name")
    for up in (where, *where.parents):
        if up.exists():
            if not up.is_dir():
                raise ConfigError(f"{option} {str(path)!r} cannot be written: {str(up)!r} is a "
                                  f"file, not a folder")
            break
    if not folder and not where.is_dir():
        raise ConfigError(f"{option} {str(path)!r} cannot be written: its folder "
                          f"{str(where)!r} does not exist")
    try:
        where.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".beamtwin-probe-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{option} {str(path)!r} cannot be written: "
                          f"{exc.strerror or exc} ({exc.filename or where})") from None
    return target


def check_device(device: str | None) -> str | None:
    """A torch device name checked before any work: ``cpu``, ``cuda`` or ``cuda:N``.

    Raises
    ------
    ConfigError
        For any other name, or CUDA where this machine has none.
    """
    if device is None:
        return None
    name = str(device).strip()
    if not (name == "cpu" or name == "cuda" or (name.startswith("cuda:") and
                                                 name[5:].isdigit())):
        raise ConfigError(f"--device {device!r} is not known; allowed: cpu, cuda, cuda:N")
    if name.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device!r}: this machine has no CUDA GPU; use cpu")
    return name


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
