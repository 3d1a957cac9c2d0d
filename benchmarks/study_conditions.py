"""Worked study: accuracy and time of the method under round deadlines and client dropout (docs/studies.md).

Runs the constrained plant (or another fedad scenario) once without conditions, takes the deadlines from that run's
update arrivals (seconds after their round's start: the 90th, 75th, 50th, 25th and 10th percentiles), runs each
deadline, then each dropout rate under the 90th-percentile deadline. All runs share one learning cache: a point
retrains only the rounds after its participation first differs (the cached / computed counts are printed).
Writes study.csv into --out and the figure (AUC of method and ideal; phase I + II time, to the last delivery, late
updates included, and to the close of the method's last round):

    PYTHONPATH=. python benchmarks/study_conditions.py --out runs/study-conditions --png docs/study-conditions.png
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from simfl.config import load_scenario
from simfl.runner import run_scenario

PERCENTILES = (90, 75, 50, 25, 10)
DROPOUTS = (0.0, 0.1, 0.2, 0.3, 0.5)


def arrivals(run_dir: Path) -> np.ndarray:
    """Seconds from each FedAvg round's start (method and ideal) to each update's delivery at its aggregator."""
    rounds = pl.read_parquet(run_dir / "rounds.parquet").filter(pl.col("phase") != "phase1")
    msgs = pl.read_parquet(run_dir / "messages.parquet").filter(pl.col("kind") == "update")
    joined = msgs.join(rounds.select("phase", "round", pl.col("aggregator").alias("dst"),
                                     pl.col("t_start").alias("t_round")), on=["phase", "round", "dst"])
    return (joined["t_deliver"] - joined["t_round"]).to_numpy()


def one(scenario: str, base: Sequence[str], sets: Sequence[str], out: Path, label: str) -> dict[str, object]:
    """One run; its row of the study table."""
    t0 = time.perf_counter()
    s = run_scenario(load_scenario(scenario, [*base, *sets]), out / label, progress=False, force=True)
    wall = time.perf_counter() - t0
    dur = s["duration_s"]
    p2 = s["participation"].get("phase2", {})
    rounds = pl.read_parquet(out / label / "rounds.parquet").filter(pl.col("phase") == "phase2")
    row = {"point": label, "auc_method": s["auc_mean"].get("method"), "auc_ideal": s["auc_mean"].get("ideal"),
           "phase1_s": dur.get("phase1"), "phase2_s": dur.get("phase2"),
           "time_s": dur.get("phase1", 0.0) + dur.get("phase2", 0.0), "done_s": rounds["t_end"].max(),
           "participation": p2.get("rate"), "late": p2.get("late"),
           "skipped": s["rounds_skipped"], "cached": s["cache"]["cached"], "computed": s["cache"]["computed"],
           "wall_s": wall}
    print(f"{label}: AUC method {row['auc_method']:.4f} ideal {row['auc_ideal']:.4f}, phase I + II "
          f"{row['time_s']:.1f} s (last round closed at {row['done_s']:.1f} s), participation "
          f"{row['participation']}, learning {row['cached']} cached / "
          f"{row['computed']} computed, {wall:.0f} s", flush=True)
    return row


def plot(table: pl.DataFrame, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex="col")
    for col, (kind, xlabel) in enumerate((("deadline", "round deadline (s); right: none"),
                                          ("dropout", "dropout (round deadline: 90th percentile)"))):
        t = table.filter(pl.col("kind") == kind).sort("x")
        x = t["x"].to_numpy()
        ax = axes[0, col]
        ax.plot(x, t["auc_method"], "o-", label="method")
        ax.plot(x, t["auc_ideal"], "s-", label="ideal")
        ax.set_ylabel("mean AUC-ROC")
        ax.legend()
        ax.grid(alpha=0.3)
        ax = axes[1, col]
        ax.plot(x, t["time_s"], "o-", color="tab:green", label="phase I + II (last delivery)")
        ax.plot(x, t["done_s"], "s--", color="tab:olive", label="method's last round closed")
        ax.set_ylabel("simulated s")
        ax.legend()
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    fig.suptitle("Constrained plant: accuracy and time under round deadlines and dropout")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="topologies/constrained-plant.toml")
    ap.add_argument("--set", action="append", default=["experiment.max_samples_per_client=100"],
                    help="overrides of every run (default: shards capped at 100 samples)")
    ap.add_argument("--out", type=Path, default=Path("runs/study-conditions"))
    ap.add_argument("--png", type=Path, default=None)
    args = ap.parse_args(argv)
    rows = [{**one(args.scenario, args.set, [], args.out, "none"), "kind": "deadline", "x": None}]
    d = arrivals(args.out / "none")
    deadlines = {p: float(np.percentile(d, p)) for p in PERCENTILES}
    print("update arrivals after round start, percentiles:", {p: round(v, 3) for p, v in deadlines.items()})
    for p, v in deadlines.items():
        rows.append({**one(args.scenario, args.set, [f"experiment.round_deadline={v!r}"], args.out, f"D{p}"),
                     "kind": "deadline", "x": v})
    rows[0]["x"] = 1.15 * max(deadlines.values())  # drawn right of the longest deadline
    for q in DROPOUTS:
        sets = [f"experiment.round_deadline={deadlines[90]!r}", f"experiment.dropout={q}"]
        rows.append({**one(args.scenario, args.set, sets, args.out, f"dropout{q}"), "kind": "dropout", "x": q})
    table = pl.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.write_csv(args.out / "study.csv")
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, float_precision=4):
        print(table)
    if args.png:
        plot(table, args.png)


if __name__ == "__main__":
    main()
