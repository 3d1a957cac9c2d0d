"""The background-traffic study's figure (docs/studies.md): control-cycle latency with FL and alone, and FL's phase
durations with and without the background.

    .venv/bin/python scripts/plot_traffic_study.py OUT.png CONTROL_RUN BEST_EFFORT_RUN NO_BACKGROUND_RUN [RUN ...]

CONTROL_RUN and BEST_EFFORT_RUN are run folders of the same plant with background traffic (its control flows at
control and at best-effort priority), NO_BACKGROUND_RUN the plant without it, further RUNs other variants (named
by their folder). Left: the latency of every frame of the control flows (the flows of kind periodic) over
simulated time, with FL at each priority and alone, against their period. Right: how much longer FL's phases (and
the centralised upload) take with the background than without it, in percent.
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
          ("upload", "centralised upload"))


def _durations(run: Path) -> dict[str, float]:
    f = read_summary(run).fedad
    return {**f.duration_s, "upload": f.centralised_upload_s}


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    out, control, best, none, *more = (Path(a) for a in argv)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    period = None
    for run, name, color, with_fl in ((control, "alone (either priority)", "0.6", False),
                                      (best, "best effort, with FL", "C3", True),
                                      (control, "control priority, with FL", "C0", True)):
        s = read_summary(run)
        cyclic = [f for f, b in (s.background or {}).items() if b.kind == "periodic"]
        period = s.background[cyclic[0]].gap_s
        bg = pl.read_parquet(run / "background.parquet").filter(pl.col("flow").is_in(cyclic), ~pl.col("lost"),
                                                                pl.col("with_fl") == with_fl)
        left.scatter(bg["t_send"].to_numpy(), bg["latency"].to_numpy(), s=2, c=color, label=name,
                     rasterized=True)
    left.axhline(period, color="k", lw=1, label=f"cycle ({period * 1e3:g} ms)")
    left.set_yscale("log")
    left.set_xlabel("simulated time the frame was sent (s)")
    left.set_ylabel("control frame latency (s)")
    left.set_title("Control cycles: frame latency with FL and alone")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8, markerscale=4)
    runs = ((control, "background, control priority"), (best, "background, all best effort"),
            *((run, f"background: {run.name}") for run in more))
    base = _durations(none)
    width = 0.8 / len(runs)
    for k, (run, label) in enumerate(runs):
        du = _durations(run)
        right.bar(np.arange(len(PHASES)) + k * width, [100 * (du[p] / base[p] - 1) for p, _ in PHASES], width,
                  label=label)
    right.set_xticks(np.arange(len(PHASES)) + width * (len(runs) - 1) / 2,
                     [f"{t}\n({base[p]:.3g} s without)" for p, t in PHASES], fontsize=8)
    right.set_ylabel("longer than without the background (%)")
    right.set_title("FL's phases with the background")
    right.grid(True, axis="y", alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
