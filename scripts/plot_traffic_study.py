"""The background-traffic study's figure (docs/studies.md): control-cycle latency with FL and alone, and FL's phase
durations with and without the background.

    .venv/bin/python scripts/plot_traffic_study.py CONTROL_RUN BEST_EFFORT_RUN NO_BACKGROUND_RUN OUT.png

CONTROL_RUN and BEST_EFFORT_RUN are run folders of the same plant with background traffic (its control flows at
control and at best-effort priority), NO_BACKGROUND_RUN the plant without it. Left: the cumulative distribution of
the control flows' frame latency (every flow of kind periodic, pooled), with FL and alone, against their period.
Right: FL's simulated phase durations in the three runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simfl.summary import read_summary  # noqa: E402

PHASES = (("phase1", "phase I"), ("phase2", "phase II"), ("ideal", "ideal baseline"),
          ("centralised", "centralised (upload + training)"))


def _cdf(ax, latency: np.ndarray, label: str, style: str) -> None:
    x = np.sort(latency)
    ax.step(x, np.arange(1, len(x) + 1) / len(x), style, where="post", label=label)


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    control, best, none, out = (Path(a) for a in argv)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    period = None
    for run, name, color in ((control, "control priority", "C0"), (best, "best effort", "C3")):
        s = read_summary(run)
        cyclic = [f for f, b in (s.background or {}).items() if b.kind == "periodic"]
        period = s.background[cyclic[0]].gap_s
        bg = pl.read_parquet(run / "background.parquet").filter(pl.col("flow").is_in(cyclic), ~pl.col("lost"))
        _cdf(left, bg.filter(pl.col("with_fl"))["latency"].to_numpy(), f"{name}, with FL", f"{color}-")
        _cdf(left, bg.filter(~pl.col("with_fl"))["latency"].to_numpy(), f"{name}, alone", f"{color}:")
    left.axvline(period, color="k", lw=1, label=f"cycle ({period * 1e3:g} ms)")
    left.set_xscale("log")
    left.set_xlabel("control frame latency (s)")
    left.set_ylabel("share of frames")
    left.set_title("Control cycles: latency with FL and alone")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    runs = ((none, "no background"), (control, "background, control priority"), (best, "background, all best effort"))
    width = 0.8 / len(runs)
    for k, (run, label) in enumerate(runs):
        du = read_summary(run).fedad.duration_s
        right.bar(np.arange(len(PHASES)) + k * width, [du.get(p, np.nan) for p, _ in PHASES], width, label=label)
    right.set_xticks(np.arange(len(PHASES)) + width, [t for _, t in PHASES], fontsize=8)
    right.set_ylabel("simulated duration (s)")
    right.set_title("FL's phases with and without the background")
    right.grid(True, axis="y", alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
