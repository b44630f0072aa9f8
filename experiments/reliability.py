"""The reliability campaign (issue 23): shared/RELIABILITY.md's matrix, the docs' figures.

Run (nightly, about three hours on two cores): ``python experiments/reliability.py``.
Each count can be lowered, e.g. ``--soak 600 --writer-kills 300``; the counts run are
in the JSON. It runs ``beamtwin bench reliability`` (so the same code as the command),
writes ``docs/reliability.json`` and prints the Markdown table of docs/controllers.md.
The seed is drawn afresh unless ``--seed`` is given, and is reported.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = ("fuzz-puts", "align-kills", "scan-kills", "writer-kills", "disk-faults",
           "scan-requests", "cli", "soak", "clients", "seed")


def table(doc: dict) -> str:
    """The docs' table of one campaign document."""
    c, g = doc["counts"], doc["goals"]
    fz, sk = doc.get("fuzz", {}), doc.get("soak", {})
    rows = [("R1/R12 hostile puts to every motor, detector and status field",
             f"{c['fuzz_puts']:,}",
             f"{fz.get('limit_excursions_at_ioc')} moves beyond a soft limit at the IOC, "
             f"{fz.get('positions_outside_seen_by_client')} readbacks outside seen by the "
             f"client, {fz.get('accepted_non_finite')} non-finite values accepted, "
             f"{len(fz.get('inconsistent_records', []))} inconsistent records, "
             f"{len(fz.get('motors_not_at_rest', []))} motors not at rest")]
    for k, what in (("align_kills", "R3 IOC killed (SIGKILL) and restarted mid-alignment"),
                    ("scan_kills", "R3 IOC killed and restarted mid-scan")):
        d = doc.get(k, {})
        rows.append((what, f"{c[k]:,}",
                     f"{d.get('hung')} hung, {d.get('tracebacks')} tracebacks, "
                     f"{d.get('untyped_errors')} untyped errors, "
                     f"{d.get('puts_at_restarted_ioc')} motion commands at the restarted IOC, "
                     f"{d.get('corrupt_final_files')} corrupt of {d.get('final_files')} files; "
                     f"ended {d.get('median_end_s')} s (median) and at most "
                     f"{d.get('max_end_s')} s after the kill; errors: "
                     f"{', '.join(d.get('errors', []))}"))
    w = doc.get("writer_kills", {})
    rows.append(("R9 NeXus writer killed (SIGKILL) mid-file", f"{c['writer_kills']:,}",
                 f"{w.get('corrupt_final_files')} corrupt files at a final name, "
                 f"{w.get('partials_unrecoverable_after_a_point')} unrecoverable partials, "
                 f"at most {w.get('max_points_lost')} point lost"))
    d = doc.get("disk_faults", {})
    rows.append(("R9 disk full at a random size, or the folder impossible",
                 f"{c['disk_faults']:,}",
                 f"{d.get('tracebacks')} tracebacks, {d.get('inconsistent')} exit codes or "
                 f"documents that disagree, {d.get('corrupt_final_files')} corrupt files; "
                 f"{d.get('completed')} completed, {d.get('failed_cleanly')} failed cleanly "
                 f"(exit 1), {d.get('refused_before_start')} refused before starting (exit 2)"))
    r = doc.get("scan_requests", {})
    rows.append(("R11 fuzzed scan requests", f"{c['scan_requests']:,}",
                 f"{r.get('crashed')} crashes, {r.get('refused_without_a_field')} refusals "
                 f"without a field; {r.get('accepted')} accepted"))
    cl = doc.get("cli", {})
    rows.append(("R11 fuzzed command lines", f"{c['cli']:,}",
                 f"{cl.get('crashed')} crashes; exit codes {cl.get('exit_codes')}"))
    lat = sk.get("latency_ms") or {}
    io = sk.get("ioc", {})
    rows.append((f"soak: {sk.get('clients')} clients reading, moving and acquiring",
                 f"{c['soak_s']:g} s",
                 f"{sk.get('errors')} errors in {sk.get('operations') or 0:,} operations; latency "
                 f"p50 {lat.get('p50', 0):.1f} ms, p99 {lat.get('p99', 0):.0f} ms; IOC RSS "
                 f"{io.get('rss_mb_start', 0):.0f} -> {io.get('rss_mb_end', 0):.0f} MB, threads "
                 f"{io.get('threads_start')} -> {io.get('threads_end')}, fds "
                 f"{io.get('fds_start')} -> {io.get('fds_end')}"))
    ran = [part in doc for part in ("fuzz", "align_kills", "scan_kills", "writer_kills",
                                    "disk_faults", "scan_requests", "cli", "soak")]
    out = ["| fault | count | result |", "|---|---|---|"]
    out += [f"| {a} | {b} | {x} |" for (a, b, x), r in zip(rows, ran, strict=True) if r]
    out.append("")
    out.append("Goals: " + ", ".join(f"{k} {v}" for k, v in g.items())
               + f" ({'all held' if doc['passed'] else 'MISSED'}; seed {doc['seed']}, "
               f"{doc['wall_s'] / 60:.0f} min)")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for opt in OPTIONS:
        ap.add_argument(f"--{opt}", default=None)
    ap.add_argument("--out", default=str(ROOT / "docs" / "reliability.json"))
    ap.add_argument("--table", metavar="JSON", default=None,
                    help="Only print the table of an earlier campaign's JSON.")
    a = ap.parse_args()
    if a.table:
        print(table(json.loads(Path(a.table).read_text())))
        return
    cmd = [sys.executable, "-m", "controllers.cli", "bench", "reliability", "--json",
           "--out", a.out]
    for opt in OPTIONS:
        value = getattr(a, opt.replace("-", "_"))
        if value is not None:
            cmd += [f"--{opt}", value]
    r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    doc = json.loads(r.stdout)
    doc.pop("partial", None)
    print(table(doc))
    sys.exit(r.returncode)


if __name__ == "__main__":
    main()
