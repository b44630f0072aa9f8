"""Train the RL policies that ship in ``agents/policies``, one per alignment stage.

Run: ``python experiments/train_policies.py [--stages mono,slits,m1,sample,kb] [--out DIR]``.
Each stage is trained with :func:`agents.rl.train` (what ``beamtwin train`` runs)
with the settings in :data:`SETTINGS`, on the fast twin of the built-in beamline,
one training at a time on this machine. The policy and its metadata (config,
seed, versions, wall time, evaluation on fresh beamlines) are copied to
``agents/policies/``, and the figures to ``docs/rl_training.json``; a Markdown
table is printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from agents.rl import TrainConfig, train

#: per stage: what it takes to get a deployable policy on a 2-core CPU
SETTINGS: dict[str, dict] = {
    "mono": {"algo": "ppo", "timesteps": 200_000, "misalign": (0.5, 2.5)},
    "slits": {"algo": "ppo", "timesteps": 100_000, "misalign": (0.5, 2.5)},
    "m1": {"algo": "ppo", "timesteps": 100_000, "misalign": (0.5, 2.5)},
    "sample": {"algo": "ppo", "timesteps": 0, "imitation_steps": 64_000, "max_step": 0.1,
               "misalign": (0.5, 2.5), "imager": True, "num_envs": 64, "net_arch": (256, 256)},
    # the KB: imitation of the teacher that knows the hidden errors (DAgger), no RL steps;
    # PPO after it lost success at every setting tried (docs/agents.md)
    "kb": {"algo": "ppo", "timesteps": 0, "imitation_steps": 128_000, "max_step": 0.1,
           "imager": True, "num_envs": 64, "net_arch": (256, 256), "rays": 1000},
}
ROOT = Path(__file__).resolve().parents[1]


def ship_metadata(src: Path, dst: Path) -> None:
    """Copy a policy's metadata, without the training machine's checkpoint folder."""
    meta = json.loads(src.read_text())
    meta["checkpoints"] = None
    dst.write_text(json.dumps(meta, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--stages", default=",".join(SETTINGS))
    ap.add_argument("--out", default=str(ROOT / "runs" / "policies"),
                    help="Training folders (checkpoints, evaluation logs).")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    shipped = ROOT / "agents" / "policies"
    shipped.mkdir(parents=True, exist_ok=True)
    figures_path = ROOT / "docs" / "rl_training.json"
    figures = json.loads(figures_path.read_text()) if figures_path.is_file() else {}
    for name in args.stages.split(","):
        cfg = TrainConfig(stage=name, seed=args.seed, eval_every=25_000,
                          checkpoint_every=50_000, **SETTINGS[name])
        print(f"training {name}: {SETTINGS[name]}", file=sys.stderr)
        rep = train(cfg, Path(args.out) / name, progress=sys.stderr.isatty())
        shutil.copy(rep.policy, shipped / f"{name}.zip")
        ship_metadata(rep.policy.with_suffix(".json"), shipped / f"{name}.json")
        figures[name] = {"algo": cfg.algo, "timesteps": cfg.timesteps,
                         "imitation_steps": cfg.imitation_steps,
                         "train_wall_s": rep.wall_s, **rep.metadata["eval"]}
        figures_path.write_text(json.dumps(figures, indent=2) + "\n")
    print("| stage | algorithm | imitation steps | RL timesteps | training wall time "
          "| success (fast twin) | median steps |")
    print("|---|---|---|---|---|---|---|")
    for name, f in figures.items():
        print(f"| {name} | {f['algo'].upper()} | {f.get('imitation_steps', 0):,} | "
              f"{f['timesteps']:,} | {f['train_wall_s'] / 60:.1f} min | "
              f"{f['success_rate']:.0%} | {f['median_steps']:.0f} |")


if __name__ == "__main__":
    main()
