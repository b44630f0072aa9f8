"""Crash-safe NeXus/HDF5 files of beamtwin's runs.

Every run writes one NeXus file (h5py), laid out for standard readers
(nexusformat, silx, NeXpy):

``/entry`` (NXentry, ``default = "data"``)
    ``title``, ``start_time``, ``end_time``, ``run_status`` (``success``, ``abort``,
    ``fail``, ...), ``run_uid``;
``/entry/instrument`` (NXinstrument)
    ``name``; ``description`` (the beamline description, JSON); one NXpositioner
    per motor, ``value`` holding its readback at every point;
``/entry/data`` (NXdata, ``signal`` and ``axes`` set)
    one column per recorded quantity, a row per point;
``/entry/program`` (NXprocess)
    ``program``, ``version`` (beamtwin and the git commit), ``agent``, ``seed``,
    ``config`` (JSON), ``refusals`` (JSON) and any other metadata;
``/entry/<name>`` (NXdata)
    images (``before``/``after`` beam images, ...).

Crash safety (shared/RELIABILITY.md R9): the file is written as
``name.h5.partial``, flushed after every point, then fsynced and renamed to
``name.h5`` when the run ends. A file at its final name is therefore always
complete, and a writer killed mid-run leaves a ``.partial`` that opens with
every point flushed before the kill (:func:`recover` validates and renames it).
A write that fails (disk full, permission denied) raises :class:`DataWriteError`
naming the file and the cause.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from twin import __version__
from twin.errors import BeamtwinError, ConfigError

__all__ = ["DataWriteError", "NexusWriter", "validate", "recover", "code_version", "PARTIAL"]

PARTIAL = ".partial"


class DataWriteError(BeamtwinError, OSError):
    """A data file that could not be written (disk full, permission denied, ...)."""


def code_version() -> dict[str, Any]:
    """beamtwin's version and, in a git checkout, the commit."""
    commit = None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).resolve().parent)
        commit = (out.stdout.strip() or None) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"beamtwin": __version__, "git_commit": commit}


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat()


class _DiskFile:
    """The file under HDF5 (h5py's ``fileobj`` driver), unbuffered.

    After a failed write (disk full, I/O error) :meth:`stop_writing` makes every
    later write a no-op, so that HDF5 can still close the file without touching
    the disk again: the bytes already written stay as they were, and the
    process does not crash at exit flushing a cache it cannot write.
    """

    def __init__(self, path: Path) -> None:
        self._f = open(path, "w+b", buffering=0)  # noqa: SIM115 - closed in close()
        self._writing = True
        #: the first write error; from then on writes are dropped (HDF5 must never see
        #: one fail: it may happen while h5py frees an object, where the error is lost
        #: and the library's state is left broken)
        self.error: OSError | None = None

    def stop_writing(self) -> None:
        self._writing = False

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def readinto(self, b: Any) -> int | None:
        return self._f.readinto(b)

    def write(self, b: Any) -> int:
        if not self._writing:
            return len(b)
        try:
            return self._f.write(b)
        except OSError as exc:
            self.error = self.error or exc
            self._writing = False
            return len(b)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def truncate(self, size: int | None = None) -> int:
        if not self._writing:
            return size or 0
        try:
            return self._f.truncate(size)
        except OSError as exc:
            self.error = self.error or exc
            self._writing = False
            return size or 0

    def flush(self) -> None:
        self._f.flush()

    def fsync(self) -> None:
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _nx(group: h5py.Group, nx_class: str) -> h5py.Group:
    group.attrs["NX_class"] = nx_class
    return group


class NexusWriter:
    """One run's NeXus file, written point by point.

    Parameters
    ----------
    path : str or Path
        Final name (``.h5`` or ``.nxs``); written as ``path + ".partial"`` until
        :meth:`close`.
    title : str
    signal : str
        The default plot signal (a column of :meth:`add_point`).
    axis : str
        Its axis (a column too; ``"point"`` numbers the points from 1 if absent).
    description : dict, optional
        The beamline description (JSON-ready), stored in the instrument.
    metadata : dict, optional
        Agent, seed, config and the like, stored in ``/entry/program``.

    Raises
    ------
    DataWriteError
        If the file cannot be created (naming it and the cause).
    """

    def __init__(self, path: str | Path, *, title: str, signal: str, axis: str = "point",
                 description: Mapping[str, Any] | None = None,
                 metadata: Mapping[str, Any] | None = None,
                 instrument_name: str = "beamline") -> None:
        self.path = Path(path)
        if self.path.suffix not in (".h5", ".nxs", ".hdf5"):
            raise ConfigError(f"NeXus file name must end in .h5, .nxs or .hdf5, "
                              f"got {str(self.path)!r}")
        self.partial = self.path.with_name(self.path.name + PARTIAL)
        self.signal, self.axis = signal, axis
        self.points = 0
        self.closed = False
        #: the write error that ended this file, if any: every later write raises it
        #: again without touching h5py, so a caller can finish its run and report it
        self.error: DataWriteError | None = None
        self._columns: list[str] = []
        self._motors: list[str] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._disk = _DiskFile(self.partial)
            self._f = h5py.File(self._disk, "w")
            f = self._f
            f.attrs.update({"default": "entry", "file_name": self.path.name,
                            "file_time": _now(), "creator": f"beamtwin {__version__}",
                            "HDF5_Version": h5py.version.hdf5_version,
                            "h5py_version": h5py.version.version})
            e = _nx(f.create_group("entry"), "NXentry")
            e.attrs["default"] = "data"
            e["title"] = title
            e["start_time"] = _now()
            e["run_status"] = "running"
            inst = _nx(e.create_group("instrument"), "NXinstrument")
            inst["name"] = instrument_name
            inst["description"] = json.dumps(description or {}, default=str)
            inst["description"].attrs["format"] = "application/json"
            d = _nx(e.create_group("data"), "NXdata")
            d.attrs["signal"] = signal
            d.attrs["axes"] = axis
            # the signal and its axis exist from the start: a run that ends before its first
            # point still leaves a file that validates
            for c in dict.fromkeys((signal, axis)):
                d.create_dataset(c, shape=(0,), maxshape=(None,), dtype="f8", chunks=(256,))
            prog = _nx(e.create_group("program"), "NXprocess")
            prog["program"] = "beamtwin"
            prog["version"] = json.dumps(code_version())
            prog["date"] = _now()
            for k, v in (metadata or {}).items():
                self._put_meta(prog, k, v)
            f.flush()
            if self._disk.error is not None:
                raise self._disk.error
        except (OSError, RuntimeError) as exc:
            if hasattr(self, "_f"):
                self.abandon()
            raise DataWriteError(f"cannot create NeXus file {str(self.partial)!r}: {exc}") from exc

    # ------------------------------------------------------------------ writing
    @staticmethod
    def _put_meta(group: h5py.Group, key: str, value: Any) -> None:
        if key in group:
            del group[key]
        if isinstance(value, (str, int, float, bool, np.integer, np.floating)):
            group[key] = value
        else:
            group[key] = json.dumps(value, default=str)
            group[key].attrs["format"] = "application/json"

    def set_metadata(self, key: str, value: Any) -> None:
        """Add or replace ``/entry/program/<key>``."""
        self._guard(lambda: self._put_meta(self._f["entry/program"], key, value))

    def add_point(self, values: Mapping[str, float], positions: Mapping[str, float] | None = None
                  ) -> int:
        """Append one point (scalars by column, and motor readbacks), flush; returns its number.

        The columns are fixed by the first point; a later point lacking one
        stores NaN there, and unknown new columns are refused.
        """
        if self.error is not None:
            raise self.error
        if self.closed:
            raise ConfigError(f"NeXus file {str(self.path)!r} is closed")
        values = dict(values)
        if self.axis == "point":
            values.setdefault("point", self.points + 1)
        positions = dict(positions or {})

        def write() -> None:
            d = self._f["entry/data"]
            inst = self._f["entry/instrument"]
            if self.points == 0:
                self._columns = list(values)
                if self.signal not in self._columns:
                    raise ConfigError(f"the first point has no signal column {self.signal!r}; "
                                      f"columns: {', '.join(self._columns)}")
                for c in self._columns:
                    if c not in d:
                        d.create_dataset(c, shape=(0,), maxshape=(None,), dtype="f8",
                                         chunks=(256,))
                self._motors = list(positions)
                for m in self._motors:
                    g = _nx(inst.create_group(m), "NXpositioner")
                    g["name"] = m
                    g.create_dataset("value", shape=(0,), maxshape=(None,), dtype="f8",
                                     chunks=(256,))
            extra = sorted(set(values) - set(self._columns))
            if extra:
                raise ConfigError(f"point {self.points + 1} has columns the file does not: "
                                  f"{extra}")
            n = self.points + 1
            for c in self._columns:
                ds = d[c]
                ds.resize((n,))
                ds[n - 1] = float(values.get(c, np.nan))
            for m in self._motors:
                ds = inst[m]["value"]
                ds.resize((n,))
                ds[n - 1] = float(positions.get(m, np.nan))
            self._f.flush()

        self._guard(write)
        self.points += 1
        return self.points

    def add_image(self, name: str, image: np.ndarray, *, title: str = "",
                  extent_um: tuple[float, float, float, float] | None = None) -> None:
        """Store a 2-D image as ``/entry/<name>`` (NXdata, with x/y axes in um if given)."""
        img = np.asarray(image, dtype=np.float32)
        if img.ndim != 2:
            raise ConfigError(f"image {name!r} must be 2-D, got shape {img.shape}")

        def write() -> None:
            e = self._f["entry"]
            g = _nx(e.create_group(name), "NXdata")
            g.attrs["signal"] = "image"
            g["image"] = img
            if title:
                g["title"] = title
            if extent_um is not None:
                x0, x1, y0, y1 = extent_um
                g["x_um"] = np.linspace(x0, x1, img.shape[1])
                g["y_um"] = np.linspace(y0, y1, img.shape[0])
                g.attrs["axes"] = ["y_um", "x_um"]
            self._f.flush()

        self._guard(write)

    def add_map(self, name: str, image: np.ndarray, *,
                axes: tuple[str, np.ndarray, str, np.ndarray], signal: str = "signal",
                title: str = "", default: bool = False) -> None:
        """Store a 2-D map as ``/entry/<name>`` (NXdata): ``image[i, j]`` at
        (``axes[1][i]``, ``axes[3][j]``), with both axes; *default* makes it the plot a
        NeXus reader shows first."""
        img = np.asarray(image, dtype=np.float64)
        n0, a0, n1, a1 = axes
        if img.ndim != 2 or img.shape != (len(a0), len(a1)):
            raise ConfigError(f"map {name!r}: image of shape {img.shape} does not match axes "
                              f"of lengths {len(a0)} x {len(a1)}")

        def write() -> None:
            e = self._f["entry"]
            g = _nx(e.create_group(name), "NXdata")
            g.attrs["signal"] = signal
            g.attrs["axes"] = [n0, n1]
            g.attrs[f"{n0}_indices"] = 0
            g.attrs[f"{n1}_indices"] = 1
            g[signal] = img
            g[n0] = np.asarray(a0, dtype=np.float64)
            g[n1] = np.asarray(a1, dtype=np.float64)
            if title:
                g["title"] = title
            if default:
                e.attrs["default"] = name
            self._f.flush()

        self._guard(write)

    def close(self, status: str = "success") -> Path:
        """Finish: status and end time, flush, fsync, rename to the final name; returns it.

        Raises
        ------
        DataWriteError
            If a write failed, now or before (the file stays a ``.partial``).
        """
        if self.error is not None:
            raise self.error
        if self.closed:
            return self.path

        def finish() -> None:
            e = self._f["entry"]
            del e["run_status"]
            e["run_status"] = status
            e["end_time"] = _now()
            e["points"] = self.points
            self._f.flush()
            self._f.close()
            if self._disk.error is not None:
                raise self._disk.error
            self._disk.fsync()
            self._disk.close()
            os.replace(self.partial, self.path)
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

        self._guard(finish)
        self.closed = True
        return self.path

    def abandon(self) -> None:
        """Close the file after a failure, leaving the ``.partial`` as it is on disk."""
        if not self.closed:
            self._disk.stop_writing()
            try:
                self._f.close()
            except Exception:  # noqa: BLE001 - the file may already be broken
                pass
            self._disk.close()
            self.closed = True

    def __enter__(self) -> NexusWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if self.closed:
            return
        if exc_type is None:
            self.close("success")
        else:
            try:
                self.close("abort" if issubclass(exc_type, KeyboardInterrupt) else "fail")
            except DataWriteError:
                self.abandon()

    def _guard(self, fn: Any) -> None:
        if self.error is not None:
            raise self.error
        if self.closed:
            raise ConfigError(f"NeXus file {str(self.path)!r} is closed")
        try:
            fn()
            if self._disk.error is not None:
                raise self._disk.error
        except (OSError, RuntimeError) as exc:  # h5py raises RuntimeError when a flush fails
            self.abandon()
            self.error = DataWriteError(f"writing NeXus file {str(self.partial)!r} failed: "
                                        f"{exc}; {self.points} point(s) were flushed before")
            self.error.__cause__ = exc
            raise self.error from exc


# --------------------------------------------------------------------------- reading
def validate(path: str | Path) -> dict[str, Any]:
    """Check that *path* is a readable NeXus file of beamtwin's layout; return a summary.

    Raises
    ------
    DataWriteError
        Naming what is missing or unreadable.
    """
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            entry_name = f.attrs.get("default", "entry")
            e = f[entry_name]
            if e.attrs.get("NX_class") != "NXentry":
                raise DataWriteError(f"{path}: /{entry_name} is not an NXentry")
            if e["instrument"].attrs.get("NX_class") != "NXinstrument":
                raise DataWriteError(f"{path}: no NXinstrument")
            default = e[e.attrs.get("default", "data")]
            if default.attrs.get("NX_class") != "NXdata":
                raise DataWriteError(f"{path}: the default group is not an NXdata")
            _check_axes(path, default)
            d = e["data"]  # the points, one row each
            signal = d.attrs.get("signal")
            n = d[signal].shape[0] if signal in d else -1
            if n < 0:
                raise DataWriteError(f"{path}: the NXdata has no signal dataset {signal!r}")
            lengths = {name: ds.shape[0] for name, ds in d.items()
                       if isinstance(ds, h5py.Dataset) and ds.ndim == 1}
            for ds in d.values():
                if isinstance(ds, h5py.Dataset) and ds.ndim == 1:
                    ds[: min(lengths.values())]  # every column reads back
            if path.name.endswith(PARTIAL):  # a crashed writer: the complete rows count
                n = min(lengths.values(), default=0)
            elif any(v != n for v in lengths.values()):
                raise DataWriteError(f"{path}: columns of unequal length {lengths}")
            status = e["run_status"][()]
            return {"path": str(path), "points": int(n), "signal": str(signal),
                    "status": status.decode() if isinstance(status, bytes) else str(status),
                    "motors": sorted(k for k, g in e["instrument"].items()
                                     if isinstance(g, h5py.Group)
                                     and g.attrs.get("NX_class") == "NXpositioner")}
    except (OSError, KeyError) as exc:
        raise DataWriteError(f"{path}: not a valid NeXus file: {exc}") from exc


def _check_axes(path: Path, group: h5py.Group) -> None:
    """The signal of an N-D NXdata has an axis of matching length per dimension."""
    signal = group.attrs.get("signal")
    if signal not in group:
        raise DataWriteError(f"{path}: NXdata {group.name} has no signal dataset {signal!r}")
    shape = group[signal].shape
    if len(shape) < 2:
        return
    axes = [a.decode() if isinstance(a, bytes) else str(a) for a in group.attrs.get("axes", [])]
    if len(axes) != len(shape):
        raise DataWriteError(f"{path}: NXdata {group.name} has {len(shape)}-D signal but axes "
                             f"{axes}")
    for i, a in enumerate(axes):
        if a not in group or group[a].shape != (shape[i],):
            raise DataWriteError(f"{path}: axis {a!r} of {group.name} does not match the "
                                 f"signal's dimension {i} ({shape[i]})")


def recover(partial: str | Path) -> Path:
    """Validate a ``.partial`` left by a crashed writer and give it its final name.

    Its ``run_status`` stays ``running``, so readers can tell it was interrupted.
    """
    partial = Path(partial)
    if not partial.name.endswith(PARTIAL):
        raise ConfigError(f"{str(partial)!r} is not a {PARTIAL} file")
    validate(partial)
    final = partial.with_name(partial.name[: -len(PARTIAL)])
    os.replace(partial, final)
    return final
