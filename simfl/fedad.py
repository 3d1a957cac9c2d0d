"""The `fedad` workload: the method and its baselines on the simulated network, learning as the nodes need it
(`simfl.learner`, cached per computation in `simfl.cache`), and the run's results (summary, tables, report)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from simfl import costs, models
from simfl.cache import NodeStore, default_cache_dir
from simfl.communities import partition_scores
from simfl.conditions import conditions_on, participation_summary
from simfl.config import DETECTORS, Scenario
from simfl.data import Partition, data_fingerprint, find_data_dir
from simfl.errors import SimflError
from simfl.learner import FlushStats, Learner, Ref, resolve_device
from simfl.plan import APPROACHES, CONDITIONS, auc_key, partition_of
from simfl.progress import Progress, progress_printer
from simfl.protocol import FedAD, FedRecord, simulate
from simfl.report import method_above_local
from simfl.trace import rounds_frame, write_rounds
from simfl.world import World, crash_faults

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


def closed_forms(scenario: Scenario, record: FedRecord, partition: Partition) -> dict[str, float]:
    """The paper's Eq. 1-3 and the centralised cost for this run's sizes, in bytes."""
    exp = scenario.experiment
    n = len(partition.clients)
    n_classes = len(exp.classes)
    k = len(record.communities)
    # the phase-I message carries the parameters and the 4-byte threshold; the paper's S_m counts parameters only
    s_msg = Fraction(sum(record.phase1_bits), 8 * n)
    s_m = s_msg - costs.THRESHOLD_BYTES
    s_u = models.payload_bytes(exp.phase2_model)
    d_bytes = [len(s.x) for s in partition.clients]
    cands, comm_sizes = costs.phase1_structure(record.adjacency, record.communities)
    return {
        "eq1": float(costs.phase1_bytes(n, n_classes, s_m)),
        "eq1_measured_structure": float(costs.phase1_bytes_measured(n, s_msg, cands, comm_sizes)),
        "eq2": float(costs.phase2_bytes_eq2(exp.rounds, [len(c) for c in record.communities], s_u)),
        "eq3": float(costs.phase2_bytes_eq3(exp.rounds, n, k, s_u)),
        "centralised": float(costs.centralised_bytes(d_bytes)),
    }


def evaluate(learner: Learner, record: FedRecord) -> dict[str, list[float]]:
    """AUC per client of every approach the run has, both detectors for FedAvg runs (`auc_key` names them): the
    group's last average ("global") and the client's own last fit ("last_fit"). One scoring batch."""
    clients = learner.partition.clients
    models_of: dict[str, list[Ref]] = {}
    for name, run in (("method", record.method), ("ideal", record.ideal)):
        if run is not None:
            models_of[auc_key(name, "global")] = [run.final(s.client) for s in clients]
            models_of[auc_key(name, "last_fit")] = [run.last_fit(s.client) for s in clients]
    if record.local is not None:
        models_of["local"] = record.local
    if record.central is not None:
        models_of["centralised"] = [record.central] * len(clients)
    refs = {k: [learner.auc(m, s.inlier_class) for m, s in zip(ms, clients, strict=True)]
            for k, ms in models_of.items()}
    return {k: [float(learner.meta(a)["auc"]) for a in v] for k, v in refs.items()}


def _auc_tables(aucs: dict[str, list[float]], partition: Partition, communities: list[list[int]],
                detector: str) -> tuple[pl.DataFrame, dict[str, dict[str, float]], dict[str, float]]:
    gof = {i: g for g, members in enumerate(communities) for i in members}
    rows: dict[str, list[Any]] = {
        "client": [s.client for s in partition.clients],
        "inlier_class": [s.inlier_class for s in partition.clients],
        "community": [gof[s.client] for s in partition.clients],
    }
    auc = {a: aucs[auc_key(a, detector)] for a in APPROACHES if auc_key(a, detector) in aucs}
    for a in APPROACHES:
        rows[a] = auc.get(a, [float("nan")] * len(partition.clients))
    per_client = pl.DataFrame(rows, schema_overrides={a: pl.Float64 for a in APPROACHES})
    present = [a for a in APPROACHES if a in auc]
    by_class_df = per_client.group_by("inlier_class").agg([pl.col(a).mean() for a in present]).sort("inlier_class")
    by_class = {str(r["inlier_class"]): {a: float(r[a]) for a in present} for r in by_class_df.iter_rows(named=True)}
    means = {a: float(np.mean(auc[a])) for a in present}
    return per_client, by_class, means


def learning_walls(stats: FlushStats) -> dict[str, float]:
    """Wall time of the learning, by stage (the method's and the ideal baseline's rounds summed): phase1, phase2
    (the method's FedAvg), ideal, baselines, evaluation, phase1_cross_evaluation, total."""
    names = {"phase I": "phase1", "method": "phase2"}
    walls: dict[str, float] = {}
    for label, st in stats.stages.items():
        name = label.split(" round ")[0]
        walls[names.get(name, name)] = walls.get(names.get(name, name), 0.0) + st.wall_s
    return {**walls, "phase1_cross_evaluation": stats.cross_wall_s, "total": sum(walls.values())}


def cache_entry(store: NodeStore | None, stats: FlushStats) -> dict[str, Any]:
    """The run summary's `cache` entry: the folder, whether nothing had to be computed, whether everything computed
    was saved, what went wrong, and how many results were read back and computed."""
    counts = {"cached": stats.cached, "computed": stats.computed}
    if store is None:
        return {"path": None, "from_cache": False, "saved": False, "note": "caching is off", **counts}
    return {"path": str(store.folder), "from_cache": stats.computed == 0,
            "saved": store.saved > 0 and store.unsaved == 0, "note": "; ".join(store.notes), **counts}


def data_used(data_dir: str | Path | None) -> dict[str, Any]:
    """The Fashion-MNIST folder a run reads (`experiment.data_dir`, $SIMFL_DATA or the default) and the sha256 of
    each of its four IDX files."""
    directory = find_data_dir(data_dir)
    files = data_fingerprint(directory)
    return {"data_dir": str(directory), "data_files": files}


def _simulate(world: World, scenario: Scenario, n: int, partition: Partition, store: NodeStore | None,
              say: Progress) -> tuple[FedAD, dict[str, list[float]], FlushStats, float]:
    """Run the nodes, learning as they need it, and evaluate: (the run, AUCs, learning counts, its wall time)."""
    exp = scenario.experiment
    t0 = time.perf_counter()
    with Learner(exp, partition, store, say, resolve_device(exp.device)) as learner:
        say("simulating the run on the network (learning as the nodes need it)")
        try:  # a message the network gave up on is a missing message to the protocol, not an error
            fed = simulate(world, learner, exp, clients=scenario.clients[:n], server=scenario.server,
                           seed=scenario.seed)
        except SimflError as e:  # the run stalled: some node waits for messages that will not come
            raise SimflError(f"{scenario.source or scenario.name}: {e}") from None
        aucs = evaluate(learner, fed.record)
        world.recorder.set_compute_wall_s(fed.wall_times())
    return fed, aucs, learner.stats, time.perf_counter() - t0


class _NotCached(Exception):
    """The fault-free replay needed a result the learning cache does not have."""


def fault_free_aucs(scenario: Scenario, n: int, partition: Partition, store: NodeStore | None,
                    device: str) -> dict[str, float] | str:
    """The mean AUCs (the run's detector) of the same run without round conditions and node crashes, replayed on
    the learning cache alone (nothing is trained): a dict by approach, or why not ("not cached", ...)."""
    if store is None:
        return "caching is off"
    defaults = dataclasses.asdict(type(scenario.experiment)())
    exp = dataclasses.replace(scenario.experiment, **{k: defaults[k] for k in CONDITIONS})
    crashes = crash_faults(scenario)
    sc = dataclasses.replace(scenario, experiment=exp, faults=tuple(f for f in scenario.faults if f not in crashes))

    def refuse() -> Any:
        raise _NotCached

    with Learner(exp, partition, store, device=device, engine=refuse) as learner:
        try:
            fed = simulate(World(sc), learner, exp, clients=scenario.clients[:n], server=scenario.server,
                           seed=scenario.seed)
            aucs = evaluate(learner, fed.record)
        except _NotCached:
            return "not cached"
        except SimflError:
            return "the fault-free run stalls"
    return {a: float(np.mean(aucs[auc_key(a, exp.detector)])) for a in APPROACHES
            if auc_key(a, exp.detector) in aucs}


def conditions_part(fed: FedAD, scenario: Scenario, n: int, partition: Partition, store: NodeStore | None,
                    device: str) -> dict[str, Any]:
    """The summary's keys on the round conditions and crashes: participation (`participation_summary`),
    rounds_skipped, failovers (the aggregators' and phase I's leader's), and auc_mean_fault_free (None when the run
    had no conditions and no crashes)."""
    part = participation_summary(fed.rows, fed.pairs_complete(), n)
    fl = [p for name, p in part.items() if name != "phase1"]
    conditioned = conditions_on(scenario.experiment) or bool(crash_faults(scenario))
    return {"participation": part, "rounds_skipped": sum(p["skipped"] for p in fl),
            "failovers": sum(p["failovers"] for p in fl) + sum(r.failover for r in fed.rows if r.phase == "phase1"),
            "auc_mean_fault_free": fault_free_aucs(scenario, n, partition, store, device) if conditioned else None}


def run_fedad(world: World, scenario: Scenario, run_dir: Path,
              say: Callable[[str], None] | bool = True) -> dict[str, Any]:
    """Run the method and its baselines, write communities.csv, auc.parquet and rounds.parquet (and .csv); return the
    workload's summary keys (`simfl.summary.FedadPart`). `say(stage)` hears of each stage (a
    `simfl.progress.Progress` also draws bars); True / False: plain lines on stderr / nothing."""
    exp = scenario.experiment
    n = exp.clients_per_class * len(exp.classes)
    if len(scenario.clients) < n:
        raise SimflError(f"{scenario.source}: experiment needs {n} clients, the scenario has {len(scenario.clients)}")
    if isinstance(say, bool):
        say = Progress("plain" if say else "quiet")
    data = data_used(exp.data_dir)
    partition = partition_of(exp, scenario.seed)
    folder = default_cache_dir()
    store = NodeStore(folder) if folder is not None else None
    fed, aucs, stats, wall = _simulate(world, scenario, n, partition, store, say)
    cond = conditions_part(fed, scenario, n, partition, store, resolve_device(exp.device))
    record = fed.record
    messages = world.recorder.messages_frame()
    compute = world.recorder.compute_frame()
    spans = phase_spans(messages, compute)
    bits = _by_phase(messages, "payload_bits")
    wire = _by_phase(messages, "wire_bytes")
    per_client, by_class, means = _auc_tables(aucs, partition, record.communities, exp.detector)
    comms = record.communities
    upload = messages.filter(pl.col("phase") == "centralised")
    walls = learning_walls(stats)
    ari, nmi = partition_scores(comms, [s.inlier_class for s in partition.clients])
    summary: dict[str, Any] = {
        "workload": "fedad",
        "clients": n,
        "classes": list(exp.classes),
        "samples_per_client": [len(c.x) for c in partition.clients],
        "payload_bytes": {p: b / 8 for p, b in bits.items()},
        "wire_bytes": wire,
        "closed_form_bytes": closed_forms(scenario, record, partition),
        "duration_s": {p: b - a for p, (a, b) in spans.items()},
        "phase_span_s": {p: [a, b] for p, (a, b) in spans.items()},
        "centralised_upload_s": float(upload["t_deliver"].max() - upload["t_send"].min()) if upload.height else None,
        "auc_mean": means,
        "detector": exp.detector,
        "auc_mean_by_detector": {
            d: {a: float(np.mean(aucs[auc_key(a, d)])) for a in ("method", "ideal") if auc_key(a, d) in aucs}
            for d in DETECTORS
        },
        "auc_by_class": by_class,
        "method_above_local": method_above_local(by_class),
        "communities": comms,
        "community_member_classes": [[partition.clients[i].inlier_class for i in c] for c in comms],
        "k": len(comms),
        "ari": ari,
        "nmi": nmi,
        "leader_communities_match": True,  # the leader's communities are the run's (no plan to differ from)
        "learning_wall_s": walls,
        "learning_from_cache": store is not None and stats.computed == 0,
        "cache": cache_entry(store, stats),
        "simulation_wall_s": wall - walls["total"],
        **cond,
        "preset_note": exp.preset_note,
        "experiment": {k: getattr(exp, k) for k in exp.__dataclass_fields__},
        **data,
    }
    pl.DataFrame({
        "community": [g for g, c in enumerate(comms) for _ in c],
        "client": [i for c in comms for i in c],
        "node": [scenario.clients[i] for c in comms for i in c],
        "inlier_class": [partition.clients[i].inlier_class for c in comms for i in c],
    }).write_csv(run_dir / "communities.csv")
    per_client.write_parquet(run_dir / "auc.parquet")
    write_rounds(rounds_frame(fed.rounds()), run_dir)
    return summary
