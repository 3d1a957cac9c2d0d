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
import math
import time
from pathlib import Path

import numpy as np
import torch

import simfl.learner as learner_mod
from simfl.config import load_scenario
from simfl.learner import Learner, Ref, Stage
from simfl.plan import FL_SEED_TAG, derive_seed, partition_of

PRESET = Path(__file__).resolve().parent.parent / "topologies" / "paper-90.toml"
TORCH_INIT = learner_mod.init_state


def keras_init(model: str, seed: int) -> dict[str, torch.Tensor]:
    """Glorot-uniform weights (fans symmetric, so conv and conv-transpose layouts agree) and zero biases."""
    shapes = TORCH_INIT(model, seed)
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
    if args.init == "keras":  # the shared starting model of each group (no cache: its keys do not say so)
        learner_mod.init_state = keras_init
    part = partition_of(exp, seed)
    groups = [g for g, c in zip(part.true_groups(), exp.classes, strict=True) if c in classes]
    t0 = time.perf_counter()
    with Learner(exp, part, device="cpu") as lr:
        aucs: list[dict[int, Ref]] = [{} for _ in range(exp.rounds)]  # per round: each client's last fit's AUC
        for g in groups:  # as the node processes register the ideal baseline (simfl.protocol)
            model = lr.init(exp.phase2_model, derive_seed(seed, FL_SEED_TAG, "init", g[0]), Stage("ideal", 1))
            prev: dict[int, Ref] = {}
            for r in range(1, exp.rounds + 1):
                prev = {i: lr.train(i, exp.phase2_model, exp.epochs_in_round(r - 1),
                                    derive_seed(seed, FL_SEED_TAG, r - 1, i), stage=Stage("ideal", r), init=model,
                                    opt=prev.get(i) if exp.persist_optimizer else None) for i in g}
                model = lr.fedavg(list(prev.items()), Stage("ideal", r))
                aucs[r - 1] |= {i: lr.auc(u, part.clients[i].inlier_class) for i, u in prev.items()}
        for t, by_client in enumerate(aucs, start=1):
            per: dict[int, list[float]] = {}
            for i, a in sorted(by_client.items()):
                per.setdefault(part.clients[i].inlier_class, []).append(lr.meta(a)["auc"])
            means = {c: float(np.mean(v)) for c, v in sorted(per.items())}
            cells = "  ".join(f"{c}: {m:.3f}" for c, m in means.items())
            print(f"seed {seed} init {args.init} round {t:2d}  {cells}  mean {np.mean(list(means.values())):.4f}",
                  flush=True)
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
