"""The crash-safe NeXus writer (RELIABILITY.md R9): real HDF5 files, real kills."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from controllers.nexus import NexusWriter, recover, validate
from twin.errors import ConfigError

# a writer in a subprocess: one point every 2 ms, "n" printed after each flush
WRITER = textwrap.dedent("""
    import os, sys, time
    from controllers.nexus import NexusWriter
    if len(sys.argv) > 3 and os.geteuid() == 0:
        os.setuid(65534)  # root writes anywhere: be nobody from here on
    w = NexusWriter(sys.argv[1], title="crash test", signal="fom",
                    metadata={"agent": "nm", "seed": 3}, description={"name": "test"})
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10**9
    for i in range(n):
        w.add_point({"fom": 0.5 * i, "flux": 1e12 + i}, {"m1.pitch": i, "kb_v.bend": 2.0 * i})
        print(i + 1, flush=True)
        time.sleep(0.002)
    w.close()
    print("closed", flush=True)
""")


def _write(tmp_path: Path, points: int = 5) -> Path:
    with NexusWriter(tmp_path / "run.h5", title="t", signal="fom",
                     description={"name": "bl"}, metadata={"agent": "nm", "seed": 7,
                                                           "config": {"budget": 10}}) as w:
        for i in range(points):
            w.add_point({"fom": i / 10, "flux": 1e12}, {"m1.pitch": float(i), "m1.bend": 1.0})
        w.add_image("before_sample", np.arange(12.0).reshape(3, 4), title="before",
                    extent_um=(-2, 2, -1, 1))
    return tmp_path / "run.h5"


def test_layout_is_nexus_and_standard_readers_plot_it(tmp_path):
    path = _write(tmp_path)
    assert not (tmp_path / "run.h5.partial").exists()
    summary = validate(path)
    assert summary["points"] == 5 and summary["status"] == "success"
    assert summary["motors"] == ["m1.bend", "m1.pitch"]
    with h5py.File(path) as f:
        e = f["entry"]
        assert e.attrs["NX_class"] == "NXentry" and e.attrs["default"] == "data"
        assert e["instrument"].attrs["NX_class"] == "NXinstrument"
        assert e["instrument/m1.pitch"].attrs["NX_class"] == "NXpositioner"
        np.testing.assert_array_equal(e["instrument/m1.pitch/value"][()], np.arange(5.0))
        assert e["program/agent"][()] == b"nm" and e["program/seed"][()] == 7
        assert b"git_commit" in e["program/version"][()]
    import nexusformat.nexus as nx

    root = nx.nxload(str(path))
    assert root.entry.data.nxsignal.nxname == "fom"
    np.testing.assert_allclose(root.entry.data.nxsignal.nxdata, np.arange(5) / 10)
    assert root.entry.data.nxaxes[0].nxname == "point"
    import silx.io
    from silx.io.nxdata import get_default

    with silx.io.open(str(path)) as f:
        d = get_default(f)
        assert d is not None and d.signal.shape == (5,) and d.axes_names == ["point"]


def test_bad_points_are_refused_with_the_field(tmp_path):
    with NexusWriter(tmp_path / "a.h5", title="t", signal="fom") as w:
        with pytest.raises(ConfigError, match="signal column 'fom'"):
            w.add_point({"flux": 1.0})
        w.add_point({"fom": 1.0})
        with pytest.raises(ConfigError, match="extra"):
            w.add_point({"fom": 1.0, "extra": 2.0})
    with pytest.raises(ConfigError, match=r"\.h5"):
        NexusWriter(tmp_path / "a.txt", title="t", signal="fom")


def test_writer_killed_mid_run_loses_at_most_one_point(tmp_path):
    done = _write(tmp_path)  # a finished run beside the crashing one
    for trial in range(3):
        path = tmp_path / f"crash{trial}.h5"
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                             text=True)
        last = 0
        t_end = time.monotonic() + 1.0 + 0.4 * trial
        while time.monotonic() < t_end:
            last = int(p.stdout.readline())
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        p.stdout.close()
        assert last > 20
        assert not path.exists()  # never at its final name unfinished
        summary = validate(path.with_name(path.name + ".partial"))
        assert last - 1 <= summary["points"] <= last + 1, (last, summary)
        assert summary["status"] == "running"
        final = recover(path.with_name(path.name + ".partial"))
        assert final == path and validate(path)["points"] == summary["points"]
    # every file at its final name opens and validates
    for f in tmp_path.glob("*.h5"):
        validate(f)
    assert validate(done)["points"] == 5


def _run_writer(tmp_path: Path, path: Path, preexec=None, *extra: str
                ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WRITER, str(path), "200000", *extra],
                          capture_output=True, text=True, timeout=120, preexec_fn=preexec,
                          cwd=tmp_path)


@pytest.mark.parametrize("limit, when", [(60_000, "mid-run"), (3_000, "at creation")])
def test_disk_full_aborts_cleanly_with_the_error(tmp_path, limit, when):
    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    path = tmp_path / "full.h5"
    r = _run_writer(tmp_path, path, small_disk)
    assert r.returncode == 1, r.stderr[-3000:]  # a clean exit with the error, not a crash
    assert "DataWriteError" in r.stderr and "full.h5.partial" in r.stderr, r.stderr[-2000:]
    assert "File too large" in r.stderr
    assert not path.exists()
    if when == "mid-run":
        m = re.search(r"(\d+) point\(s\) were flushed before", r.stderr)
        assert m is not None and int(m.group(1)) > 100
        # the points flushed before the disk filled are still there (at most one lost)
        assert validate(tmp_path / "full.h5.partial")["points"] >= int(m.group(1)) - 1
    else:
        assert "cannot create NeXus file" in r.stderr


def test_permission_denied_is_a_clear_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    tmp_path.chmod(0o755)
    r = _run_writer(tmp_path, locked / "x.h5", None, "as-nobody")
    assert r.returncode == 1
    assert "DataWriteError" in r.stderr and "cannot create NeXus file" in r.stderr
    assert "ermission denied" in r.stderr, r.stderr[-2000:]
    assert list(locked.iterdir()) == []
