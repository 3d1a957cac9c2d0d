"""The ideal baseline of paper-90 alone: FedAvg on the true groups, each client's last fit scored after every round.

    .venv/bin/python benchmarks/ideal_probe.py [--seed S] [--classes 0,3,5] [--init torch|keras]

Prints, per round, the mean AUC-ROC per inlier class (and over the classes asked for), the figures behind the
seed spread and the Keras comparison in docs/reproducing-the-paper.md. ``--init keras`` replaces PyTorch's default
initialisation of the shared starting model with Keras' (glorot-uniform weights, zero biases). With the file's own
seed and init a class's last line equals the ideal column of ``simfl run topologies/paper-90.toml``: groups are
trained independently. All ten classes take ~25 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

from simfl import plan
from simfl.config import load_scenario
from simfl.learning import Engine

PRESET = Path(__file__).resolve().parent.parent / "topologies" / "paper-90.toml"


def keras_init(model: str, seed: int) -> dict[str, torch.Tensor]:
    """Glorot-uniform weights (fans symmetric, so conv and conv-transpose layouts agree) and zero biases."""
    shapes = plan.init_state(model, seed)
    g = torch.Generator().manual_seed(int(seed) + 12345)
    out = {}
    for name, v in shapes.items():
        if name.endswith("bias"):
            out[name] = torch.zeros_like(v)
        else:
            limit = math.sqrt(6.0 / ((v.shape[0] + v.shape[1]) * v[0, 0].numel()))
            out[name] = (torch.rand(v.shape, generator=g) * 2 - 1) * limit
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=None, help="run seed (default: the preset's)")
    ap.add_argument("--classes", default=None, help="inlier classes, comma-separated (default: all)")
    ap.add_argument("--init", choices=("torch", "keras"), default="torch")
    args = ap.parse_args()
    scenario = load_scenario(PRESET)
    exp = scenario.experiment
    seed = scenario.seed if args.seed is None else args.seed
    classes = exp.classes if args.classes is None else [int(c) for c in args.classes.split(",")]
    if args.init == "keras":
        plan.init_state = keras_init  # the shared starting model of each group is made in this process
    part = plan.partition_of(exp, seed)
    groups = [g for g, c in zip(part.true_groups(), exp.classes, strict=True) if c in classes]
    # only the chosen classes' clients (plan_federated and _evaluate key them by ID, not position)
    sub = dataclasses.replace(part, clients=tuple(part.clients[i] for g in groups for i in g))
    t0 = time.perf_counter()
    with Engine(device="cpu", workers=exp.workers) as engine:
        fl = plan.plan_federated(engine, exp, sub, groups, seed, "ideal", lambda _m: None)
        for t, results in enumerate(fl.rounds, start=1):
            by_client = {r.key: r.state for r in results}
            aucs = plan._evaluate(engine, sub, exp.phase2_model, by_client)
            per: dict[int, list[float]] = {}
            for s, a in zip(sub.clients, aucs, strict=True):
                per.setdefault(s.inlier_class, []).append(a)
            means = {c: float(np.mean(v)) for c, v in sorted(per.items())}
            cells = "  ".join(f"{c}: {m:.3f}" for c, m in means.items())
            print(f"seed {seed} init {args.init} round {t:2d}  {cells}  mean {np.mean(list(means.values())):.4f}",
                  flush=True)
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
