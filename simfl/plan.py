"""The learning plan: every computation the nodes of a federated run perform, executed ahead in batches.

The method's learning does not depend on the network (no deadlines, no dropped clients), so simfl runs all of
it first, stage by stage, each stage as one batched request to the learning engine (all 90 clients' training of
a round together), and the SimPy node processes then replay it: they carry the real tensors in their messages
and spend simulated compute time computed from FLOPs. This keeps the learning fast (the hardware sees big
batches) and makes the simulated clock independent of this machine's speed.

Stages: phase I (train the phase-I model per client, thresholds, cross-evaluation, one-sided association bits,
communities), phase II (FedAvg per community), the baselines (local, ideal, centralised) and the AUC evaluation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from simfl import models
from simfl.aggregation import fedavg
from simfl.communities import association_matrix, find_communities, one_sided, partition_scores
from simfl.config import DETECTORS, Experiment
from simfl.data import Partition, find_data_dir, load_fashion_mnist, make_partition, min_shard
from simfl.learning import Engine, ScoreJob, TrainJob, TrainResult, auc, threshold
from simfl.learning_worker import init_state
from simfl.messages import payload_bits_of
from simfl.progress import PLAIN_EVERY_S

Progress = Callable[[str], None]


@contextlib.contextmanager
def _ticking(engine: Engine, say: Progress, unit: str) -> Iterator[None]:
    """While inside, `engine` reports '<done>/<total> <unit>': to `say.count(done, total, unit)` where `say` has it
    (a `simfl.progress.Progress`: a live bar), else through `say` at most every PLAIN_EVERY_S seconds."""
    last = time.perf_counter()
    count = getattr(say, "count", None)

    def tick(done: int, total: int) -> None:
        nonlocal last
        if count is not None:
            count(done, total, unit)
            return
        now = time.perf_counter()
        if done < total and now - last >= PLAIN_EVERY_S:
            last = now
            say(f"  ... {done}/{total} {unit}")

    engine.on_progress = tick
    try:
        yield
    finally:
        engine.on_progress = None


def derive_seed(seed: int, *tags: object) -> int:
    """A 31-bit seed for one purpose, derived from the run seed and tags (stable across runs and machines)."""
    h = hashlib.sha256(repr((seed, *tags)).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


@dataclass
class Phase1Plan:
    """What phase I computes: per-client models, thresholds, the r matrix, association bits, communities."""

    model: str
    train: list[TrainResult]
    thresholds: np.ndarray  # [n] float32, each carried with its model
    payloads: list[dict[str, torch.Tensor]]  # what each client sends: its parameters and its threshold
    payload_bits: list[int]
    ratios: np.ndarray  # r[i, j] = share of client i's samples that model j calls inliers
    one_sided: np.ndarray  # bool [n, n]: client i's verdict on peer j (sent to j)
    adjacency: np.ndarray  # bool [n, n]: both sides agree
    communities: list[list[int]]
    score_flops: list[float]  # FLOPs for client i to score its shard with one model
    score_wall_s: float  # measured wall time of the whole cross-evaluation
    community_wall_s: float


@dataclass
class FLPlan:
    """One FedAvg run over fixed groups: per round, every client's training result and update size."""

    phase: str
    groups: list[list[int]]
    rounds: list[list[TrainResult]]
    update_bits: list[list[int]]  # [round][client]
    global_bits: list[list[int]]  # [round][group]: the average after each round
    final: list[dict[str, torch.Tensor]]  # final global model per group
    initial_bits: list[int]  # per group: the initial model (sent in round 1 when clients keep their last fit)
    aggregate_flops: list[float]  # per group, one FedAvg

    def group_of(self) -> dict[int, int]:
        return {i: g for g, members in enumerate(self.groups) for i in members}


@dataclass
class CentralPlan:
    """The centralised baseline: raw shards uploaded, one model trained on their union at the server."""

    upload_bits: list[int]
    train: TrainResult


@dataclass
class LearningPlan:
    partition: Partition
    phase1: Phase1Plan
    method: FLPlan
    ideal: FLPlan | None
    local: list[TrainResult] | None
    central: CentralPlan | None
    auc: dict[str, list[float]] = field(default_factory=dict)  # approach -> AUC per client
    ari: float = float("nan")
    nmi: float = float("nan")
    wall_s: dict[str, float] = field(default_factory=dict)


def _train_jobs(
    exp: Experiment, partition: Partition, model: str, epochs: int, seed: int, tag: str, **kw: object
) -> list[TrainJob]:
    return [
        TrainJob(
            key=s.client, model=model, x=s.x, epochs=epochs, seed=derive_seed(seed, tag, s.client),
            batch_size=exp.batch_size, lr=exp.lr, val_fraction=exp.val_fraction, **kw,  # type: ignore[arg-type]
        )
        for s in partition.clients
    ]


def plan_phase1(engine: Engine, exp: Experiment, partition: Partition, seed: int, say: Progress) -> Phase1Plan:
    """Phase I: local phase-I models, thresholds, cross-evaluation, association and communities."""
    model = exp.phase1_model
    n = len(partition.clients)
    xs = [s.x for s in partition.clients]
    say(f"phase I: training {model} on {n} clients x {exp.phase1_epochs} epochs")
    with _ticking(engine, say, "clients trained"):
        train = engine.train(_train_jobs(exp, partition, model, exp.phase1_epochs, seed, "phase1"))
    own = engine.score([ScoreJob(key=r.key, model=model, state=r.state, x=x) for r, x in zip(train, xs)])
    thresholds = np.array([threshold(s, exp.outlier_fraction) for s in own], dtype=np.float32)
    payloads = [
        {**r.state, "threshold": torch.tensor([thresholds[i]], dtype=torch.float32)} for i, r in enumerate(train)
    ]
    say(f"phase I: cross-evaluation ({n} models x {n} shards)")
    t0 = time.perf_counter()
    with _ticking(engine, say, "groups of models done"):
        ratios = engine.cross_inlier_ratios(model, [r.state for r in train], thresholds.tolist(), xs)
    score_wall = time.perf_counter() - t0
    sided = one_sided(ratios, exp.tau)
    adjacency = association_matrix(ratios, exp.tau)
    t0 = time.perf_counter()
    communities = find_communities(adjacency, exp.community_method, seed=derive_seed(seed, "communities"))
    community_wall = time.perf_counter() - t0
    return Phase1Plan(
        model=model, train=train, thresholds=thresholds, payloads=payloads,
        payload_bits=[payload_bits_of(p) for p in payloads], ratios=ratios, one_sided=sided,
        adjacency=adjacency, communities=communities,
        score_flops=[len(x) * models.flops_per_sample(model) for x in xs],
        score_wall_s=score_wall, community_wall_s=community_wall,
    )


# Every FedAvg run (the method's communities, the ideal baseline's true groups) draws from one seed stream: a
# client's shuffles in round t and a group's initial model depend on the run seed, the client or group and t, not
# on which run it is. A group the communities share with the true groups therefore trains identically in both
# runs, and `plan_federated(..., reuse=)` computes it once. (The tag is the method's, so its results are the same
# as before the streams were shared.)
FL_SEED_TAG = "phase2"


def _initial_models(model: str, groups: Sequence[Sequence[int]], seed: int) -> list[dict]:
    """The seeded weights each group's FedAvg starts from."""
    return [init_state(model, derive_seed(seed, FL_SEED_TAG, "init", g[0])) for g in groups]


def plan_federated(
    engine: Engine, exp: Experiment, partition: Partition, groups: Sequence[Sequence[int]], seed: int,
    phase: str, say: Progress, reuse: FLPlan | None = None,
) -> FLPlan:
    """FedAvg per group for `exp.rounds` rounds, all groups' clients trained together each round.

    Groups that also appear in `reuse` (an FLPlan of the same experiment and seed) are not trained again: their
    training is the same computation (see FL_SEED_TAG), so their results are taken from `reuse`."""
    model = exp.phase2_model
    groups = [sorted(g) for g in groups]
    shared = {tuple(g) for g in groups} & {tuple(g) for g in reuse.groups} if reuse is not None else set()
    copied = {i for g in shared for i in g}
    globals_ = _initial_models(model, groups, seed)
    initial_bits = [payload_bits_of(s) for s in globals_]
    group_of = {i: gi for gi, g in enumerate(groups) for i in g}
    opt: dict[int, object] = {}
    rounds: list[list[TrainResult]] = []
    update_bits: list[list[int]] = []
    global_bits: list[list[int]] = []
    n_params = sum(v.numel() for v in globals_[0].values())
    to_train = [s for s in partition.clients if s.client not in copied]
    for t in range(exp.rounds):
        epochs = exp.epochs_in_round(t)
        note = f" (+{len(copied)} in groups the {_auc_name(reuse)} run has too: reused)" if copied else ""
        say(f"{phase}: round {t + 1}/{exp.rounds}, {len(to_train)} clients x {epochs} epochs{note}")
        jobs = [
            TrainJob(
                key=s.client, model=model, x=s.x, epochs=epochs, seed=derive_seed(seed, FL_SEED_TAG, t, s.client),
                init_state=globals_[group_of[s.client]], batch_size=exp.batch_size, lr=exp.lr,
                val_fraction=exp.val_fraction, opt_state=opt.get(s.client) if exp.persist_optimizer else None,
            )
            for s in to_train
        ]
        with _ticking(engine, say, "clients trained"):
            trained = engine.train(jobs) if jobs else []
        opt = {r.key: r.opt_state for r in trained}
        for r in trained:  # the optimiser state lives on in `opt` only: plans stay small (and cacheable)
            r.opt_state = None
        by_client = {r.key: r for r in trained}
        if copied:
            by_client |= {r.key: r for r in reuse.rounds[t] if r.key in copied}  # type: ignore[union-attr]
        results = [by_client[s.client] for s in partition.clients]
        globals_ = [fedavg([by_client[i].state for i in g], [by_client[i].n_train for i in g]) for g in groups]
        rounds.append(results)
        update_bits.append([payload_bits_of(r.state) for r in results])
        global_bits.append([payload_bits_of(s) for s in globals_])
    return FLPlan(
        phase=phase, groups=groups, rounds=rounds, update_bits=update_bits, global_bits=global_bits,
        final=globals_, initial_bits=initial_bits, aggregate_flops=[2.0 * len(g) * n_params for g in groups],
    )


def _evaluate(
    engine: Engine, partition: Partition, model: str, state_of_client: Sequence[dict[str, torch.Tensor]]
) -> list[float]:
    """AUC-ROC of each client's detector on its inlier class's test set (shared scoring where models coincide)."""
    jobs: list[ScoreJob] = []
    slot: dict[tuple[int, int], int] = {}
    index: list[int] = []
    for s in partition.clients:
        key = (id(state_of_client[s.client]), s.inlier_class)
        if key not in slot:
            slot[key] = len(jobs)
            x, _ = partition.tests[s.inlier_class]
            jobs.append(ScoreJob(key=len(jobs), model=model, state=state_of_client[s.client], x=x))
        index.append(slot[key])
    scores = engine.score(jobs)
    aucs = []
    for s, k in zip(partition.clients, index):
        _, is_out = partition.tests[s.inlier_class]
        aucs.append(float(auc(scores[k], is_out)))
    return aucs


# The approaches whose AUCs a run reports: each client alone, FedAvg in the communities found, FedAvg in the true
# groups, one model on all the data.
APPROACHES = ("local", "method", "ideal", "centralised")


def auc_key(approach: str, detector: str) -> str:
    """Where `LearningPlan.auc` keeps an approach's AUCs for a detector (only FedAvg runs have a last fit)."""
    return f"{approach}_last_fit" if detector == "last_fit" and approach in ("method", "ideal") else approach


def _auc_name(fl: FLPlan) -> str:
    return "method" if fl.phase == "phase2" else fl.phase


def _missing_detectors(plan: LearningPlan, fl: FLPlan) -> list[str]:
    return [d for d in DETECTORS if auc_key(_auc_name(fl), d) not in plan.auc]


def _evaluate_fl(engine: Engine, plan: LearningPlan, fl: FLPlan, model: str) -> None:
    """AUC per client of each detector of a FedAvg run not yet in the plan: the group's final average ("global")
    and the client's own last fit ("last_fit")."""
    gof = fl.group_of()
    last = {r.key: r.state for r in fl.rounds[-1]}
    for d in _missing_detectors(plan, fl):
        states = [fl.final[gof[s.client]] if d == "global" else last[s.client] for s in plan.partition.clients]
        plan.auc[auc_key(_auc_name(fl), d)] = _evaluate(engine, plan.partition, model, states)


def partition_of(exp: Experiment, seed: int) -> Partition:
    """The clients' shards and test sets of `exp` for run seed `seed` (or `exp.split_seed` where it is set)."""
    data = load_fashion_mnist(find_data_dir(exp.data_dir))
    split_seed = seed if exp.split_seed is None else exp.split_seed
    partition = make_partition(data, exp.classes, exp.clients_per_class, exp.outlier_fraction, split_seed, exp.split,
                               min_samples=min_shard(exp.val_fraction))
    return partition.capped(exp.max_samples_per_client)


def build_plan(exp: Experiment, seed: int, say: Progress, device: str | None = None) -> LearningPlan:
    """Run every learning stage of the method and the requested baselines."""
    partition = partition_of(exp, seed)
    walls: dict[str, float] = {}
    with Engine(device=device or exp.device, workers=exp.workers) as engine:
        t0 = time.perf_counter()
        p1 = plan_phase1(engine, exp, partition, seed, say)
        walls["phase1"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        method = plan_federated(engine, exp, partition, p1.communities, seed, "phase2", say)
        walls["phase2"] = time.perf_counter() - t0
        plan = LearningPlan(partition=partition, phase1=p1, method=method, ideal=None, local=None, central=None)
        _evaluate_fl(engine, plan, method, exp.phase2_model)
        if "ideal" in exp.baselines:
            t0 = time.perf_counter()
            plan.ideal = plan_federated(
                engine, exp, partition, partition.true_groups(), seed, "ideal", say, reuse=method
            )
            walls["ideal"] = time.perf_counter() - t0
            _evaluate_fl(engine, plan, plan.ideal, exp.phase2_model)
        # The baselines without communication train in one request: the single centralised job shares the
        # workers with the 90 local ones instead of leaving all but one idle.
        jobs: list[TrainJob] = []
        if "local" in exp.baselines:
            say(f"local baseline: {len(partition.clients)} clients, up to {exp.local_baseline_epochs} epochs")
            jobs += _train_jobs(exp, partition, exp.phase2_model, exp.local_baseline_epochs, seed, "local",
                                patience=exp.patience, restore_best=exp.restore_best)
        if "centralised" in exp.baselines:
            say(f"centralised baseline: one {exp.phase2_model} on all shards x {exp.centralised_epochs} epochs")
            jobs.append(TrainJob(
                key=-1, model=exp.phase2_model, x=np.concatenate([s.x for s in partition.clients]),
                epochs=exp.centralised_epochs, seed=derive_seed(seed, "centralised"), batch_size=exp.batch_size,
                lr=exp.lr, val_fraction=exp.val_fraction,
            ))
        if jobs:
            t0 = time.perf_counter()
            with _ticking(engine, say, "baseline models trained"):
                results = engine.train(jobs)
            walls["baselines"] = time.perf_counter() - t0
        if "local" in exp.baselines:
            plan.local = results[: len(partition.clients)]
            plan.auc["local"] = _evaluate(engine, partition, exp.phase2_model, [r.state for r in plan.local])
        if "centralised" in exp.baselines:
            train = results[-1]
            plan.central = CentralPlan(upload_bits=[payload_bits_of(s.x) for s in partition.clients], train=train)
            plan.auc["centralised"] = _evaluate(
                engine, partition, exp.phase2_model, [train.state] * len(partition.clients)
            )
    truth = [s.inlier_class for s in partition.clients]
    plan.ari, plan.nmi = partition_scores(p1.communities, truth)
    plan.wall_s = walls
    return plan


# ---------------------------------------------------------------------------------------------------- identity
PLAN_FORMAT = 3  # 2: Keras' fixed validation split and EarlyStopping without restoring; 3: one FedAvg seed stream
# Experiment fields that do not change what is learned (who aggregates, how fast, how it is labelled).
# (Both detectors are evaluated in every plan, so `detector` only picks which AUCs the report shows.)
NOT_LEARNING = frozenset({"aggregator", "workers", "preset_note", "data_dir", "device", "detector"})


def learning_identity(exp: Experiment, seed: int) -> str:
    """What is learned, as canonical JSON: the experiment's learning fields and the seed. Two runs with the same
    identity (and data, device kind, simfl and torch versions: see `simfl.cache.plan_key`) learn the same plan."""
    fields = {k: v for k, v in dataclasses.asdict(exp).items() if k not in NOT_LEARNING}
    return json.dumps({"exp": fields, "seed": seed}, sort_keys=True, default=list)
