"""Train the RL stabiliser that ships with beamtwin (agents/policies/stabilize.zip).

SAC on ``beamtwin/Stabilize-v0`` of the built-in beamline, a new hidden gap
dependence every episode, training schedules seeded apart from the benchmark's.
Writes the policy and a JSON record beside it (steps, wall time, versions).

    python experiments/train_stabilizer.py [--steps 200000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import stable_baselines3
import torch

from agents.stabilize.rl import train_stabilizer
from twin import __version__
from twin.presets import default_preset

OUT = Path(__file__).resolve().parents[1] / "agents" / "policies" / "stabilize.zip"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    desc = default_preset()
    _, wall = train_stabilizer(desc, timesteps=a.steps, seed=a.seed, save=a.out,
                               progress=print, progress_bar=True)
    record = {"algo": "SAC", "timesteps": a.steps, "seed": a.seed, "train_s": round(wall, 1),
              "beamline": desc.name, "env": "beamtwin/Stabilize-v0", "episode_s": 20.0,
              "beamtwin": __version__, "stable_baselines3": stable_baselines3.__version__,
              "torch": torch.__version__, "machine": platform.machine(),
              "date": time.strftime("%Y-%m-%d")}
    a.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
