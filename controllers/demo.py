"""The main job (``beamtwin demo``): one-click alignment of a simulated beamline over EPICS.

:func:`run_demo` starts the simulated IOC of the beamline (``beamtwin ioc``, in a
subprocess with its own CA port) with day-one hidden errors, aligns it over
Channel Access with the one-click alignment of :mod:`controllers.oneclick`,
writes the NeXus file and the report, and stops the IOC, also when the
alignment fails or is interrupted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ioc_sim.process import IocProcess, client_env, free_port, random_prefix
from twin.cliutil import jsonable
from twin.description import BeamlineDescription
from twin.errors import ConfigError

__all__ = ["run_demo"]


def run_demo(desc: BeamlineDescription, *, preset: str | None = None, seed: int = 1,
             misalign: float = 1.0, backend: str = "fast", rays: int = 20_000,
             disturbances: bool = True, agent_name: str | None = None,
             stage_names: Sequence[str] | None = None, budget: int = 100,
             out: str | Path = "beamtwin-demo",
             progress: Callable[[str], None] | None = None,
             progress_bar: bool = True) -> dict[str, Any]:
    """Start the IOC, align over EPICS, write the files, stop the IOC; the demo's document.

    Returns
    -------
    dict
        ``alignment`` (the ``align --epics --json`` document), ``nexus_file``
        (absolute), ``report``, ``ioc`` (prefix, port, backend, misalign, seed,
        exit status) and ``summary``.
    """
    from controllers.oneclick import align_over_epics

    say = progress or (lambda m: None)
    if backend not in ("fast", "xrt"):
        raise ConfigError(f"backend must be 'fast' or 'xrt', got {backend!r}")
    port = free_port()
    # the client finds only this IOC (libca reads these when it first talks CA)
    os.environ.update(client_env([port]))
    prefix = random_prefix()
    args = ["--backend", backend, "--rays", str(rays), "--misalign", str(misalign),
            "--seed", str(seed), "--disturbances" if disturbances else "--no-disturbances"]
    if preset is not None:
        args += ["--preset", str(preset)]
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    say(f"starting the simulated IOC of {desc.name} ({backend} twin, misaligned "
        f"x{misalign:g}, seed {seed}) on port {port}")
    ioc = IocProcess(prefix, port, args).start()
    try:
        doc = align_over_epics(desc, prefix, agent_name=agent_name, stage_names=stage_names,
                               budget=budget, seed=seed, out_dir=folder, progress=say,
                               progress_bar=progress_bar)
    finally:
        say("stopping the IOC")
        try:
            rc, _ = ioc.stop()
        except Exception:  # noqa: BLE001 - the IOC must not outlive the demo
            ioc.kill()
            rc = -9
    f, i = doc.get("final"), doc["ideal"]
    verdict = doc.get("verdict") or {}
    summary = (f"{desc.name}: {'aligned' if doc['success'] else 'NOT aligned'} over EPICS by "
               f"{doc['agent']} in {doc['evaluations']} evaluations and "
               f"{doc['beamline_time_s']:.0f} s; stages aligned {doc['stages_aligned']}/"
               f"{len(doc['stages'])}")
    if f is not None:
        summary += (f"; at {doc['observed_at']}: flux {f['flux']:.3g} ph/s "
                    f"({doc['final_flux_ratio']:.3g}x ideal), FWHM {f['fwhm_x_um']:.3g} x "
                    f"{f['fwhm_y_um']:.3g} um (ideal {i['fwhm_x_um']:.3g} x "
                    f"{i['fwhm_y_um']:.3g})")
    if not doc["success"]:
        summary += f"; why: {verdict.get('reason')}: {verdict.get('detail')}"
    result = {"alignment": doc, "nexus_file": doc.get("nexus_file"), "report": doc.get("report"),
              "ioc": {"prefix": prefix, "port": port, "backend": backend, "rays": rays,
                      "misalign": misalign, "seed": seed, "disturbances": disturbances,
                      "exit_status": rc},
              "summary": summary}
    (folder / "demo.json").write_text(json.dumps(jsonable(result), indent=1))
    return result
