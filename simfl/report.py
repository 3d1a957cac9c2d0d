"""A readable report of a federated run beside the paper's Tables 2-4, and its plots."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from simfl.costs import PAPER_TABLE4_MB
from simfl.summary import BackgroundFlow, FedadPart, LatencyStats, RunSummary, read_summary

# The paper's Table 3 (mean AUC-ROC per inlier class) and Table 4 (MB = 1e6 bytes, rounded model sizes).
PAPER_AUC: dict[int, tuple[float, float, float]] = {
    0: (0.672, 0.664, 0.753), 1: (0.950, 0.946, 0.953), 2: (0.485, 0.670, 0.688), 3: (0.713, 0.726, 0.748),
    4: (0.583, 0.726, 0.732), 5: (0.601, 0.592, 0.599), 6: (0.512, 0.704, 0.707), 7: (0.849, 0.873, 0.869),
    8: (0.395, 0.567, 0.550), 9: (0.734, 0.809, 0.800),
}
PAPER_AUC_MEAN = (0.649, 0.728, 0.740)
PAPER_TABLE2 = "G0=I6, G1=I8, G2=I1, G3=I5, G4=I7, G5=I9, G6=I2+I0+I3+I4 (7 communities, ARI 0.539)"


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def _nan(x: float | None) -> float:
    return math.nan if x is None else x


def _mb(b: float | None) -> str:
    return "-" if b is None else f"{b / 1e6:,.2f}"


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:,.3f} s" if s < 100 else f"{s:,.1f} s ({s / 60:.1f} min)"


def table2(f: FedadPart) -> str:
    lines = ["| community | clients | inlier classes (clients per class) |", "|---|---|---|"]
    for g, members in enumerate(f.communities):
        classes = f.community_member_classes[g]
        counts: dict[int, int] = {}
        for c in classes:
            counts[c] = counts.get(c, 0) + 1
        desc = ", ".join(f"I{c} ({k})" for c, k in sorted(counts.items()))
        lines.append(f"| G{g} | {len(members)} | {desc} |")
    return "\n".join(lines)


def table3(f: FedadPart) -> str:
    cols = ["local", "method", "ideal", "centralised"]
    head = "| inlier class | " + " | ".join(cols) + " | paper local | paper method | paper ideal |"
    lines = [head, "|" + "---|" * (len(cols) + 4)]
    for cls, row in f.auc_by_class.items():
        paper = PAPER_AUC.get(int(cls), (None, None, None))
        lines.append(f"| {cls} | " + " | ".join(_f(row.get(c)) for c in cols) + " | "
                     + " | ".join(_f(p) for p in paper) + " |")
    m = f.auc_mean
    lines.append("| **mean** | " + " | ".join(f"**{_f(m.get(c))}**" for c in cols) + " | "
                 + " | ".join(_f(p) for p in PAPER_AUC_MEAN) + " |")
    above = method_above_local(f.auc_by_class)
    if above is not None:
        paper = sum(1 for lo, me, _ in PAPER_AUC.values() if me > lo)
        lines += ["", f"Method above local in {above[0]} of {above[1]} inlier classes (paper: {paper} of "
                  f"{len(PAPER_AUC)})."]
    return "\n".join(lines)


def method_above_local(by_class: Mapping[str, Mapping[str, float | None]]) -> tuple[int, int] | None:
    """(classes where the method's mean AUC beats the local baseline's, classes compared), if both ran."""
    rows = [r for r in by_class.values() if r.get("method") is not None and r.get("local") is not None]
    return (sum(1 for r in rows if r["method"] > r["local"]), len(rows)) if rows else None


def _detector_line(f: FedadPart) -> str:
    """Which FedAvg model the method and ideal columns score, with the other choice's means beside it."""
    det = f.detector
    what = ("each client's own last local fit (the authors' code: the last average is never sent)"
            if det == "last_fit" else "the community's final average (sent to every member after the last round)")
    other = "global" if det == "last_fit" else "last_fit"
    alt = f.auc_mean_by_detector.get(other, {})
    line = f"Detector after FedAvg (`experiment.detector = \"{det}\"`): {what}."
    if alt:
        line += (f" With `{other}` instead: method {_f(alt.get('method'))}, ideal {_f(alt.get('ideal'))} "
                 "(same training, scored from the same plan).")
    return line


AUTHORS_SEED = 42  # random_state of the authors' runconfig (github mirqr/FedAD)


def _data_line(summary: FedadPart | Mapping[str, Any]) -> str:
    """Which shards and test sets the run used (experiment.split / split_seed); a summary.json object also works."""
    if isinstance(summary, FedadPart):
        exp, sizes = summary.experiment, summary.samples_per_client or [0]
    else:
        exp, sizes = summary["experiment"], summary.get("samples_per_client") or [0]
    split, seed = exp.get("split", "balanced"), exp.get("split_seed")
    how = ("the authors' own draw (their `datautil.partition`)" if split == "authors"
           else "simfl's balanced draw (evenly mixed outliers, exact per-class shares)")
    seed_txt = "the run seed" if seed is None else f"split_seed {seed}"
    if split == "authors" and seed == AUTHORS_SEED:
        seed_txt += ", the authors' seed: the very shards and test sets of the paper's runs"
    return (f"Data: {len(sizes)} shards of {min(sizes)}-{max(sizes)} Fashion-MNIST training images, {how}, "
            f"{seed_txt} (`experiment.split`).")


def _source_lines(f: FedadPart, cache: dict[str, Any] | None) -> list[str]:
    """The data folder and file hashes the run read, and where its learning results came from."""
    out = []
    if f.data_dir is not None:
        files = ", ".join(f"`{name}` {digest[:16]}" for name, digest in (f.data_files or {}).items())
        out.append(f"Data folder `{f.data_dir}`; sha256 (first 16 hex digits): {files}.")
    learned = {True: "read from the learning cache", False: "computed in this run (not from the learning cache)",
               None: "not recorded"}[f.learning_from_cache]
    line = f"Learning results: {learned}."
    if cache:
        line += " Cache: " + ", ".join(f"{k} {v}" for k, v in cache.items()) + "."
    return out + [line]


def table4(f: FedadPart) -> str:
    pb, wb, cf, du = f.payload_bytes, f.wire_bytes, f.closed_form_bytes, f.duration_s
    rows = [
        ("phase I", "phase1", f"Eq. 1: {_mb(cf['eq1'])} (measured structure: {_mb(cf['eq1_measured_structure'])})",
         PAPER_TABLE4_MB["phase1"]),
        ("phase II", "phase2", f"Eq. 2: {_mb(cf['eq2'])} / Eq. 3: {_mb(cf['eq3'])}", PAPER_TABLE4_MB["phase2"]),
        ("ideal baseline (FL on true groups)", "ideal", "-", None),
        ("centralised upload", "centralised", f"{_mb(cf['centralised'])}", PAPER_TABLE4_MB["centralised"]),
    ]
    lines = ["| what | payload MB (measured) | closed form MB | wire MB (with headers) | simulated duration |"
             " paper MB |", "|---|---|---|---|---|---|"]
    for label, key, closed, paper in rows:
        if key not in pb and key not in du:
            continue
        lines.append(f"| {label} | {_mb(pb.get(key))} | {closed} | {_mb(wb.get(key))} | {_seconds(du.get(key))} | "
                     f"{'-' if paper is None else paper} |")
    if "local" in du:
        lines.append(f"| local baseline (no communication) | 0 | 0 | 0 | {_seconds(du['local'])} | - |")
    return "\n".join(lines)


def render(summary: RunSummary) -> str:
    """report.md of a finished fedad run."""
    f = summary.fedad
    if f is None:
        raise ValueError(f"render: run {summary.scenario} is a {summary.workload} run, not fedad")
    note = f.preset_note
    exp = f.experiment
    out = [
        f"# simfl run: {summary.scenario}",
        "",
        f"{f.clients} clients, inlier classes {f.classes}, p = {exp['clients_per_class']}, "
        f"d = {exp['outlier_fraction']}, tau = {exp['tau']}, community method {exp['community_method']}, "
        f"phase I {exp['phase1_model']} x {exp['phase1_epochs']} epochs, phase II {exp['phase2_model']} "
        f"x {exp['rounds']} rounds (local epochs {exp['local_epochs']}), aggregator: {exp['aggregator']}.",
        "",
    ]
    for line in (_data_line(f), *_source_lines(f, summary.cache)):
        out += [line, ""]
    if note:
        out += [f"**Shortened preset.** {note}", ""]
    out += [
        "## Table 2: communities found in phase I",
        "",
        f"{f.k} communities; against the true groups (clients by inlier class): "
        f"ARI {_f(f.ari)}, NMI {_f(f.nmi)}. Paper: {PAPER_TABLE2}.",
        "",
        table2(f),
        "",
        "## Table 3: AUC-ROC, mean per inlier class",
        "",
        "Each client's detector scored on its inlier class's test set (outlier fraction d); means over the class's "
        "clients. local = each client alone (early stopping); method = FedAvg within the communities found; "
        "ideal = FedAvg within the true groups; centralised = one model trained on all uploaded shards.",
        "",
        _detector_line(f),
        "",
        table3(f),
        "",
        "## Table 4: communication cost and time on this network",
        "",
        "Payload = the paper's accounting (float32 parameters, 2-byte IDs, 1-bit association results); wire = what "
        "the links carried (bytes rounded up, per-packet headers). Duration = simulated seconds from the phase's "
        "first send or computation to its last delivery or computation. Paper column: Table 4 (rounded model "
        "sizes 4,000 and 28,000 parameters).",
        "",
        table4(f),
        "",
        *_conditions_lines(f),
        *_incast_lines(summary),
        *_background_lines(summary),
    ]
    if f.centralised_upload_s is not None:
        out += [f"Centralised: uploading the raw shards alone takes {_seconds(f.centralised_upload_s)}.", ""]
    plots = "`bytes_over_time.png`, `link_utilisation.png`, `auc_by_class.png`, `cost_vs_clients.png`"
    if summary.background:
        plots += ", `background_latency.png`"
    out += [f"Plots: {plots}.", ""]
    return "\n".join(out)


def participation_table(f: FedadPart) -> str:
    """Per FedAvg run: rounds averaged / skipped / aborted, failovers, updates averaged in time of those invited
    (the participation rate), late (of them dropped), sat out; then the AUCs beside the fault-free ones."""
    lines = ["| FedAvg run | rounds averaged / skipped / aborted | failovers | updates averaged / invited (rate) "
             "| late (dropped) | sat out |", "|---|---|---|---|---|---|"]
    for name, p in f.participation.items():
        if name == "phase1":
            continue
        lines.append(f"| {name} | {p['averaged']} / {p['skipped']} / {p['aborted']} | {p['failovers']} | "
                     f"{p['arrived']} / {p['invited']} ({_f(p['rate'])}) | {p['late']} ({p['dropped']}) | "
                     f"{p['unavailable']} |")
    return "\n".join(lines)


def _condition(key: str, v: Any) -> str:
    if v is None:
        return "unset"
    return f"{v:g} s" if key.endswith(("deadline", "timeout")) else str(v)


def _conditions_lines(f: FedadPart) -> list[str]:
    """The section on the round conditions and crashes (runs that had some); none: nothing."""
    if f.auc_mean_fault_free is None:
        return []
    exp = f.experiment
    keys = ("round_deadline", "min_participants", "late_updates", "fraction_fit", "dropout", "phase1_deadline",
            "failover_timeout")
    p1 = f.participation.get("phase1", {})
    free = f.auc_mean_fault_free
    aucs = ", ".join(f"{a} {_f(v)}" for a, v in f.auc_mean.items())
    beside = (", ".join(f"{a} {_f(v)}" for a, v in free.items()) if isinstance(free, dict)
              else f"unknown ({free}: run it without the conditions first)")
    return ["## Participation under the round conditions", "",
            "Conditions: " + ", ".join(f"{k} = {_condition(k, exp.get(k))}" for k in keys) + ".", "",
            f"Phase I: {p1.get('groups_arrived', '-')} of {p1.get('clients', '-')} candidate groups reached the "
            f"leader; {p1.get('pairs_complete', '-')} of {p1.get('pairs', '-')} pairs had both one-sided results.",
            "", participation_table(f), "",
            f"Mean AUC under these conditions: {aucs}. Without them (same seed, from the learning cache): {beside}.",
            ""]


def _incast_lines(summary: RunSummary) -> list[str]:
    """The fluid model's checks' warnings (`simfl.incast`: incast, then WiFi contention; one per phase each) as a
    paragraph and a list; none: nothing."""
    found = [*(summary.incast or []), *(summary.contention or [])]
    if not found:
        return []
    why = []
    if summary.incast:
        why.append("many TCP flows converge on one port at once, and the fluid model has no finite buffers "
                   "(docs/network-model.md, \"Incast\")")
    if summary.contention:
        why.append("WiFi stations and their access point contend for a cell's channel, which the fluid model shares "
                   "per flow at full capacity, 802.11 per transmitter and with collisions (docs/network-model.md, "
                   "\"WiFi contention\")")
    return [f"**Packet-level timing would be slower.** Here {'; and '.join(why)}:", "",
            *[f"- {w['message']}" for w in found], ""]


def _latency(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1e3:.3g} ms" if x < 1 else f"{x:.3g} s"


def _stats(st: LatencyStats) -> str:
    return f"{_latency(st.p50_s)} / {_latency(st.p99_s)} / {_latency(st.max_s)}"


def _loss(st: LatencyStats) -> str:
    return "-" if st.loss is None else f"{100 * st.loss:.3g}%"


def background_table(flows: Mapping[str, BackgroundFlow]) -> str:
    """One row per background flow: latency p50 / p99 / max and loss with FL and alone, and the verdict."""
    lines = ["| flow | kind, priority | route | frame, every | frames | latency p50 / p99 / max, with FL | alone "
             "(without FL) | loss with / without FL | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for name, f in flows.items():
        every = "once" if f.gap_s is None else _latency(f.gap_s)
        lines.append(f"| {name} | {f.kind}, {f.priority} | {f.src} -> {f.dst} ({f.transport}) | "
                     f"{f.frame_bytes:,} B, {every} | {f.with_fl.frames:,} | {_stats(f.with_fl)} | "
                     f"{_stats(f.without_fl)} | {_loss(f.with_fl)} / {_loss(f.without_fl)} | {f.verdict} |")
    return "\n".join(lines)


def _background_lines(summary: RunSummary) -> list[str]:
    if not summary.background:
        return []
    return ["## Background traffic", "",
            "The plant's own flows ([[traffic]]), run beside FL and again alone for the same frames (network only). "
            "Latency = delivery - send of each frame (a bulk flow: of each upload); p50 and p99 by nearest rank over "
            "the delivered frames. A periodic flow whose p99 exceeds its period misses its cycle; control frames "
            "have strict priority over everything else (docs/network-model.md, Background traffic).", "",
            background_table(summary.background), ""]


def plot_background(path: Path, flows: Mapping[str, BackgroundFlow]) -> None:
    """Each flow's latency p50, p99 and max with FL (filled) and alone (open), and a periodic flow's period."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(flows)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.35 * len(names)))
    marks = (("p50_s", "o", "p50"), ("p99_s", "s", "p99"), ("max_s", "^", "max"))
    for run, dy, filled in (("with_fl", -0.15, True), ("without_fl", 0.15, False)):
        for key, marker, label in marks:
            xs = [getattr(getattr(flows[n], run), key) for n in names]
            ys = [i + dy for i, x in enumerate(xs) if x is not None]
            xs = [x for x in xs if x is not None]
            ax.scatter(xs, ys, marker=marker, s=30, facecolors=None if filled else "none",
                       edgecolors="C0" if run == "with_fl" else "C1", c="C0" if filled else None,
                       label=f"{label}, {'with FL' if filled else 'alone'}")
    for i, n in enumerate(names):
        if flows[n].kind == "periodic" and flows[n].gap_s:
            ax.plot([flows[n].gap_s] * 2, [i - 0.4, i + 0.4], "k-", lw=1.5)
    ax.set_yticks(range(len(names)), [f"{n} ({flows[n].priority})" for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("latency (s); black bar: the period of a periodic flow")
    ax.set_title("Background traffic: latency with FL and alone")
    ax.grid(True, which="both", axis="x", alpha=0.3)
    ax.legend(fontsize=7, ncols=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plots(run_dir: Path, f: FedadPart, messages: pl.DataFrame, links: pl.DataFrame) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if messages.height:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for phase in sorted(set(messages["phase"].to_list())):
            m = messages.filter(pl.col("phase") == phase).sort("t_deliver")
            cum = m["wire_bytes"].cum_sum() / 1e6
            ax.step(m["t_deliver"].to_numpy(), cum.to_numpy(), where="post", label=phase)
        ax.set_xlabel("simulated time (s)")
        ax.set_ylabel("wire MB delivered (cumulative)")
        ax.set_title("Bytes on the network over simulated time, per phase")
        ax.legend()
        fig.tight_layout()
        fig.savefig(run_dir / "bytes_over_time.png", dpi=110)
        plt.close(fig)
    if links.height:
        top = links.sort("utilisation", descending=True).head(25)
        fig, ax = plt.subplots(figsize=(8, 6))
        labels = [f"{s}->{d}" for s, d in zip(top["src"].to_list(), top["dst"].to_list())]
        ax.barh(labels[::-1], top["utilisation"].to_numpy()[::-1])
        ax.set_xlabel("utilisation over the run (busy time / run time)")
        ax.set_title("Busiest link directions")
        fig.tight_layout()
        fig.savefig(run_dir / "link_utilisation.png", dpi=110)
        plt.close(fig)
    by_class = f.auc_by_class
    if by_class:
        import numpy as np

        classes = [int(c) for c in by_class]
        fig, ax = plt.subplots(figsize=(9, 4.5))
        cols = [c for c in ("local", "method", "ideal", "centralised") if c in f.auc_mean]
        w = 0.8 / (len(cols) + 1)
        x = np.arange(len(classes))
        for k, c in enumerate(cols):
            ax.bar(x + k * w, [_nan(by_class[str(cl)].get(c)) for cl in classes], w, label=c)
        ax.scatter(x + w, [PAPER_AUC.get(cl, (np.nan,) * 3)[1] for cl in classes], marker="_", s=200, c="k",
                   label="paper: method", zorder=3)
        ax.set_xticks(x + w * (len(cols) - 1) / 2, [str(c) for c in classes])
        ax.set_xlabel("inlier class")
        ax.set_ylabel("AUC-ROC")
        ax.set_ylim(0.3, 1.0)
        ax.legend(ncols=3, fontsize=8)
        fig.tight_layout()
        fig.savefig(run_dir / "auc_by_class.png", dpi=110)
        plt.close(fig)


def plot_cost_vs_clients(path: Path, f: FedadPart) -> None:
    """The closed forms (Eq. 1, Eq. 3, centralised) against the number of clients, with this run's measured bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from simfl import costs, models

    exp = f.experiment
    n_run = f.clients
    per_client = sum(f.samples_per_client) / n_run if f.samples_per_client else 0
    ns = sorted({20, 30, 50, 90, 150, 300, 500, 1000, n_run})
    t = costs.cost_table(ns, classes=len(f.classes), rounds=exp["rounds"],
                         phase1_params=models.param_count(exp["phase1_model"]),
                         phase2_params=models.param_count(exp["phase2_model"]), samples_per_client=round(per_client))
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(t["n"], t["phase1_bytes"] / 1e6, label="phase I (Eq. 1)")
    ax.plot(t["n"], t["phase2_eq3_bytes"] / 1e6, label="phase II (Eq. 3, k = |C|)")
    ax.plot(t["n"], t["total_eq3_bytes"] / 1e6, lw=2.5, label="federated total")
    ax.plot(t["n"], t["centralised_bytes"] / 1e6, "--", lw=2.5, label=f"centralised ({per_client:.0f} samples/client)")
    pb = f.payload_bytes
    for key, marker, label in (("phase1", "o", "measured phase I"), ("phase2", "s", "measured phase II"),
                               ("centralised", "^", "measured centralised")):
        if key in pb:
            ax.scatter([n_run], [pb[key] / 1e6], marker=marker, s=60, zorder=3, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of clients n")
    ax.set_ylabel("payload MB")
    ax.set_title("Communication cost against the number of clients")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run_dir: str | Path, summary: RunSummary | None = None) -> None:
    """Write report.md and the plots of the finished fedad run in `run_dir` (its summary.json and message and link
    traces; `summary`: the summary already read)."""
    run_dir = Path(run_dir)
    summary = summary or read_summary(run_dir)
    if summary.fedad is None:
        raise ValueError(f"write_report: {run_dir} holds a {summary.workload} run, not fedad")
    (run_dir / "report.md").write_text(render(summary), encoding="utf-8")
    _plots(run_dir, summary.fedad, pl.read_parquet(run_dir / "messages.parquet"),
           pl.read_parquet(run_dir / "links.parquet"))
    plot_cost_vs_clients(run_dir / "cost_vs_clients.png", summary.fedad)
    if summary.background:
        plot_background(run_dir / "background_latency.png", summary.background)
