"""The `fedad` workload: learning plan, network replay, and the run's results (summary, tables, report)."""

from __future__ import annotations

import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from simfl import costs, models
from simfl.cache import cached_plan, default_cache_dir
from simfl.config import DETECTORS, Scenario
from simfl.data import data_fingerprint, find_data_dir
from simfl.errors import SimflError
from simfl.messages import MessageLost
from simfl.plan import APPROACHES, LearningPlan, auc_key
from simfl.progress import Progress, progress_printer
from simfl.protocol import simulate
from simfl.report import method_above_local
from simfl.world import World

__all__ = ["run_fedad", "closed_forms", "phase_spans", "data_used", "progress_printer"]  # sweep: progress_printer


def phase_spans(messages: pl.DataFrame, compute: pl.DataFrame) -> dict[str, tuple[float, float]]:
    """Simulated [start, end] of each phase: first send or compute start to last delivery or compute end."""
    parts = []
    if messages.height:
        parts.append(messages.select("phase", pl.col("t_send").alias("a"), pl.col("t_deliver").alias("b")))
    if compute.height:
        parts.append(compute.select("phase", pl.col("t_start").alias("a"), pl.col("t_end").alias("b")))
    if not parts:
        return {}
    spans = pl.concat(parts).group_by("phase").agg(pl.col("a").min(), pl.col("b").max()).sort("phase")
    return {row["phase"]: (row["a"], row["b"]) for row in spans.iter_rows(named=True)}


def _by_phase(messages: pl.DataFrame, column: str) -> dict[str, int]:
    if not messages.height:
        return {}
    agg = messages.group_by("phase").agg(pl.col(column).sum()).sort("phase")
    return {r["phase"]: int(r[column]) for r in agg.iter_rows(named=True)}


def closed_forms(scenario: Scenario, plan: LearningPlan) -> dict[str, float]:
    """The paper's Eq. 1-3 and the centralised cost for this run's sizes, in bytes."""
    exp = scenario.experiment
    n = len(plan.partition.clients)
    n_classes = len(exp.classes)
    k = len(plan.phase1.communities)
    # the phase-I message carries the parameters and the 4-byte threshold; the paper's S_m counts parameters only
    s_msg = Fraction(sum(plan.phase1.payload_bits), 8 * n)
    s_m = s_msg - costs.THRESHOLD_BYTES
    s_u = models.payload_bytes(exp.phase2_model)
    d_bytes = [len(s.x) for s in plan.partition.clients]
    cands, comm_sizes = costs.phase1_structure(plan.phase1.adjacency, plan.phase1.communities)
    return {
        "eq1": float(costs.phase1_bytes(n, n_classes, s_m)),
        "eq1_measured_structure": float(
            costs.phase1_bytes_measured(n, s_msg, cands, comm_sizes)
        ),
        "eq2": float(costs.phase2_bytes_eq2(exp.rounds, [len(c) for c in plan.phase1.communities], s_u)),
        "eq3": float(costs.phase2_bytes_eq3(exp.rounds, n, k, s_u)),
        "centralised": float(costs.centralised_bytes(d_bytes)),
    }


def _auc_tables(
    plan: LearningPlan, detector: str
) -> tuple[pl.DataFrame, dict[str, dict[str, float]], dict[str, float]]:
    gof = plan.method.group_of()
    rows: dict[str, list[Any]] = {
        "client": [s.client for s in plan.partition.clients],
        "inlier_class": [s.inlier_class for s in plan.partition.clients],
        "community": [gof[s.client] for s in plan.partition.clients],
    }
    auc = {a: plan.auc[auc_key(a, detector)] for a in APPROACHES if auc_key(a, detector) in plan.auc}
    for a in APPROACHES:
        rows[a] = auc.get(a, [float("nan")] * len(plan.partition.clients))
    per_client = pl.DataFrame(rows, schema_overrides={a: pl.Float64 for a in APPROACHES})
    present = [a for a in APPROACHES if a in auc]
    by_class_df = per_client.group_by("inlier_class").agg([pl.col(a).mean() for a in present]).sort("inlier_class")
    by_class = {str(r["inlier_class"]): {a: float(r[a]) for a in present} for r in by_class_df.iter_rows(named=True)}
    means = {a: float(np.mean(auc[a])) for a in present}
    return per_client, by_class, means


def data_used(data_dir: str | Path | None) -> dict[str, Any]:
    """The Fashion-MNIST folder a run reads (`experiment.data_dir`, $SIMFL_DATA or the default) and the sha256 of
    each of its four IDX files."""
    directory = find_data_dir(data_dir)
    files = data_fingerprint(directory)
    return {"data_dir": str(directory), "data_files": files}


def run_fedad(world: World, scenario: Scenario, run_dir: Path,
              say: Callable[[str], None] | bool = True) -> dict[str, Any]:
    """Learn, replay on the network, write communities.csv and auc.parquet; return the workload's summary keys
    (`simfl.summary.FedadPart`). `say(stage)` hears of each stage (a `simfl.progress.Progress` also draws bars);
    True / False: plain lines on stderr / nothing."""
    exp = scenario.experiment
    n = exp.clients_per_class * len(exp.classes)
    if len(scenario.clients) < n:
        raise SimflError(f"{scenario.source}: experiment needs {n} clients, the scenario has {len(scenario.clients)}")
    if isinstance(say, bool):
        say = Progress("plain" if say else "quiet")
    data = data_used(exp.data_dir)
    t0 = time.perf_counter()
    cached = cached_plan(exp, scenario.seed, say, default_cache_dir())
    plan = cached.plan
    learn_wall = time.perf_counter() - t0
    say("replaying every message on the simulated network")
    t0 = time.perf_counter()
    try:
        fed = simulate(world, plan, clients=scenario.clients[:n], server=scenario.server, aggregator=exp.aggregator,
                       community_method=exp.community_method, seed=scenario.seed, detector=exp.detector)
    except MessageLost as e:
        m = e.message
        raise SimflError(f"{scenario.source or scenario.name}: message {m.src}->{m.dst} ({m.phase} {m.kind}) lost "
                         f"after network.give_up ({world.scenario.network.give_up:g} s on a path that is down, at "
                         f"simulated {world.env.now:g} s); the fedad protocol does not handle lost messages yet: it "
                         "needs deadlines (docs/network-model.md, Outages)") from None
    sim_wall = time.perf_counter() - t0
    messages = world.recorder.messages_frame()
    compute = world.recorder.compute_frame()
    spans = phase_spans(messages, compute)
    bits = _by_phase(messages, "payload_bits")
    wire = _by_phase(messages, "wire_bytes")
    per_client, by_class, means = _auc_tables(plan, exp.detector)
    comms = plan.phase1.communities
    upload = messages.filter(pl.col("phase") == "centralised")
    summary: dict[str, Any] = {
        "workload": "fedad",
        "clients": n,
        "classes": list(exp.classes),
        "samples_per_client": [len(c.x) for c in plan.partition.clients],
        "payload_bytes": {p: b / 8 for p, b in bits.items()},
        "wire_bytes": wire,
        "closed_form_bytes": closed_forms(scenario, plan),
        "duration_s": {p: b - a for p, (a, b) in spans.items()},
        "phase_span_s": {p: [a, b] for p, (a, b) in spans.items()},
        "centralised_upload_s": float(upload["t_deliver"].max() - upload["t_send"].min()) if upload.height else None,
        "auc_mean": means,
        "detector": exp.detector,
        "auc_mean_by_detector": {
            d: {a: float(np.mean(plan.auc[auc_key(a, d)])) for a in ("method", "ideal") if auc_key(a, d) in plan.auc}
            for d in DETECTORS
        },
        "auc_by_class": by_class,
        "method_above_local": method_above_local(by_class),
        "communities": comms,
        "community_member_classes": [[plan.partition.clients[i].inlier_class for i in c] for c in comms],
        "k": len(comms),
        "ari": plan.ari,
        "nmi": plan.nmi,
        "leader_communities_match": fed.leader_communities == comms,
        "learning_wall_s": {**plan.wall_s, "phase1_cross_evaluation": plan.phase1.score_wall_s, "total": learn_wall},
        "learning_from_cache": cached.from_cache,
        "cache": cached.summary(),
        "simulation_wall_s": sim_wall,
        "preset_note": exp.preset_note,
        "experiment": {k: getattr(exp, k) for k in exp.__dataclass_fields__},
        **data,
    }
    pl.DataFrame({
        "community": [g for g, c in enumerate(comms) for _ in c],
        "client": [i for c in comms for i in c],
        "node": [scenario.clients[i] for c in comms for i in c],
        "inlier_class": [plan.partition.clients[i].inlier_class for c in comms for i in c],
    }).write_csv(run_dir / "communities.csv")
    per_client.write_parquet(run_dir / "auc.parquet")
    return summary
