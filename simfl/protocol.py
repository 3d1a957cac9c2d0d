"""The method and its baselines as SimPy node processes that send every message through the simulated network.

The processes decide who takes part and when; what that yields comes from a `Learner` (see `simfl.learner`): each
computation is registered as a reference (`Ref`) that the messages carry, with its payload size and FLOPs known
before its value, and values are computed lazily, in batches, when a process first needs one (inside its step:
no simulated time passes). Each client spends simulated compute time (FLOPs / its device's FLOP/s). Phases run
one after another on one network: the method (phase I, then phase II as each client learns its community), then
the ideal baseline, the centralised baseline and the local baseline.

Phase I, per client i: train; send (model, threshold) to every peer; score its own shard with each model it
receives and send that peer its one-sided association bit; combine both sides into its candidate group; send the
candidate group (2-byte IDs) to the leader (lowest ID), which builds the association graph, runs community
detection and sends every other client its community's member IDs. The leader's communities are the result.

Phase II, per community: each round all members train, the non-aggregator members send their update to the
aggregator (the lowest-ID member, or the server node, which learns the communities from the leader out of band),
which averages them. With detector "global" every member starts from the same seeded weights and the aggregator
sends each new average back after its round (the last one is the members' detector). With detector "last_fit"
(the authors' Flower setup) the aggregator sends the initial model before round 1 and each average before the next
round; the last average is never sent and every member keeps its own last local fit. Both send r models each way
per member (the paper's Eq. 2 and 3).

Rounds are numbered 1..r here and in the trace's `round` column (0: messages outside FedAvg rounds); seeds keep the
0-based round of `simfl.plan.derive_seed`'s tags.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from simfl import models
from simfl.communities import find_communities, one_sided
from simfl.config import Experiment
from simfl.learner import BASELINES, PHASE1, THRESHOLD_BITS, Learner, Ref, Stage
from simfl.messages import flag_bits, ids_bits, payload_bits_of
from simfl.order import send_order
from simfl.plan import FL_SEED_TAG, derive_seed
from simfl.world import World

Proc = Generator[simpy.Event, Any, Any]


@dataclass(frozen=True)
class ModelRef:
    """Phase I's model message: client `client`'s trained model, its threshold and its cross-evaluation row."""

    client: int
    train: Ref
    threshold: Ref
    cross: Ref


@dataclass(frozen=True)
class Verdict:
    """Client `judge`'s one-sided association result about client `about`'s model (1 bit; its value is read
    when the receiver combines both sides)."""

    judge: int
    about: int


@dataclass
class FLRun:
    """One FedAvg run (the method in its communities, or the ideal baseline in the true groups) as its processes
    ran it. Groups are keyed by their lowest member."""

    phase: str  # the trace's phase
    stage: str  # the learner's stage
    rounds: int
    groups: list[list[int]] = field(default_factory=list)
    models: dict[tuple[int, int], Ref] = field(default_factory=dict)  # (group, r): round r's model; r = R + 1: final
    updates: dict[tuple[int, int], Ref] = field(default_factory=dict)  # (client, r): its update of round r

    def group_of(self, i: int) -> list[int]:
        return next(g for g in self.groups if i in g)

    def final(self, i: int) -> Ref:
        """The last average of client i's group (detector "global")."""
        return self.models[(self.group_of(i)[0], self.rounds + 1)]

    def last_fit(self, i: int) -> Ref:
        """Client i's own last update (detector "last_fit")."""
        return self.updates[(i, self.rounds)]


@dataclass
class FedRecord:
    """What a federated run did, as references into its learner (what the fedad workload reports)."""

    phase1: list[ModelRef]
    phase1_bits: list[int]  # payload bits of each client's phase-I model message
    method: FLRun
    ideal: FLRun | None = None
    adjacency: np.ndarray | None = None  # the leader's association graph
    communities: list[list[int]] = field(default_factory=list)  # the leader's result
    central: Ref | None = None
    upload_bits: list[int] = field(default_factory=list)  # the centralised baseline's raw shards
    local: list[Ref] | None = None


class FedAD:
    """Node processes of one federated run over a `World`, learning through a `Learner`."""

    def __init__(self, world: World, learner: Learner, exp: Experiment, *, clients: Sequence[str],
                 server: str | None, seed: int) -> None:
        self.world = world
        self.env = world.env
        self.net = world.network
        self.learner = learner
        self.exp = exp
        self.nodes = list(clients)
        self.index = {name: i for i, name in enumerate(self.nodes)}
        self.server = server
        self.aggregator = exp.aggregator
        # detector "last_fit": members receive the model to train from before each round (and keep their last
        # fit); detector "global": they receive each round's average after it
        self.models_before_round = exp.detector == "last_fit"
        self.seed = seed
        self.n = len(self.nodes)
        self.leader = 0
        self.known_community: dict[int, list[int]] = {}
        self.communities_known = self.env.event()  # the leader's result, for server aggregators
        self.record = FedRecord(phase1=[], phase1_bits=[], method=FLRun("phase2", "method", exp.rounds))
        self._sided: np.ndarray | None = None
        self._walls: list[Callable[[], float]] = []  # each compute row's measured wall time, in recording order

    # ---------------------------------------------------------------- helpers
    def _get(self, node: str, kind: str, phase: str, rnd: int | None = None) -> simpy.Event:
        if rnd is None:
            return self.net.inbox(node).get(lambda m: m.kind == kind and m.phase == phase)
        return self.net.inbox(node).get(lambda m: m.kind == kind and m.phase == phase and m.round == rnd)

    def _compute(self, node: str, flops: float, wall: Callable[[], float], *, kind: str, phase: str,
                 round: int) -> simpy.Event:
        """`World.compute`, noting where the row's wall time will come from (known once the learner has run)."""
        ev = self.world.compute(node, flops, kind=kind, phase=phase, round=round)
        ev.callbacks.append(lambda _ev: self._walls.append(wall))  # after the world's: one per row, in order
        return ev

    def _trained(self, ref: Ref) -> Callable[[], float]:
        return lambda: self.learner.meta(ref)["wall_s"]

    def _scored(self, model: ModelRef) -> Callable[[], float]:
        """A client's scoring with a peer's model: its share of that model's cross-evaluation (n shards)."""
        return lambda: self.learner.meta(model.cross)["wall_s"] / self.n

    def wall_times(self) -> list[float]:
        """Each compute row's wall time (the learner's measurement), in the recorder's order."""
        return [float(w()) for w in self._walls]

    def _flops(self, ref: Ref) -> float:
        """FLOPs of computing `ref` (asks the learner where they depend on values: the local baseline's early
        stopping, OC-SVM)."""
        return ref.flops if ref.flops is not None else float(self.learner.meta(ref)["flops"])

    def _bits(self, ref: Ref) -> int:
        return ref.bits if ref.bits is not None else payload_bits_of(self.learner.value(ref, "state"))

    def _score_flops(self, i: int, model: ModelRef) -> float:
        """FLOPs of client i scoring its shard with a peer's phase-I model."""
        n = len(self.learner.partition.clients[i].x)
        if self.exp.phase1_model != "ocsvm":
            return n * models.flops_per_sample(self.exp.phase1_model)
        support = len(self.learner.value(model.train, "state")["dual_coef"])
        return n * models.ocsvm_flops_per_sample(support)

    # ---------------------------------------------------------------- phase I
    def _register_phase1(self) -> None:
        """Every client's phase-I model, threshold and cross row, registered at once: one batch when first asked."""
        exp, lr = self.exp, self.learner
        for i in range(self.n):
            tr = lr.train(i, exp.phase1_model, exp.phase1_epochs, derive_seed(self.seed, "phase1", i), stage=PHASE1)
            thr = lr.threshold(tr, i)
            self.record.phase1.append(ModelRef(i, tr, thr, lr.cross(tr, thr)))

    def sided(self) -> np.ndarray:
        """The one-sided verdicts: [i, j] is client i's about model j (asks the learner for phase I's rows)."""
        if self._sided is None:
            rows = [self.learner.value(m.cross, "row") for m in self.record.phase1]
            self._sided = one_sided(np.column_stack(rows), self.exp.tau)
        return self._sided

    def phase1_client(self, i: int) -> Proc:
        mine = self.record.phase1[i]
        node = self.nodes[i]
        yield self._compute(node, self._flops(mine.train), self._trained(mine.train), kind="train",
                            phase="phase1", round=0)
        bits = self._bits(mine.train) + THRESHOLD_BITS
        self.record.phase1_bits[i] = bits
        for j in send_order(i, self.n, self.exp.send_order, self.seed):
            self.net.send(node, self.nodes[j], kind="model", phase="phase1", round=0, payload_bits=bits,
                          payload=mine)
        for _ in range(self.n - 1):
            msg = yield self._get(node, "model", "phase1")
            theirs: ModelRef = msg.payload
            yield self._compute(node, self._score_flops(i, theirs), self._scored(theirs), kind="score",
                                phase="phase1", round=0)
            self.net.send(node, msg.src, kind="assoc", phase="phase1", round=0, payload_bits=flag_bits(1),
                          payload=Verdict(i, theirs.client))
        verdicts: list[Verdict] = []
        for _ in range(self.n - 1):
            msg = yield self._get(node, "assoc", "phase1")
            verdicts.append(msg.payload)
        sided = self.sided()
        # the candidate group names the client itself and its associated peers (2-byte IDs), as the authors do
        both = {v.judge for v in verdicts if sided[i, v.judge] and sided[v.judge, v.about]}
        candidates = np.array([j for j in range(self.n) if j == i or j in both], dtype=np.uint16)
        if i == self.leader:
            yield self.env.process(self.phase1_leader(candidates))
        else:
            self.net.send(node, self.nodes[self.leader], kind="candidates", phase="phase1", round=0,
                          payload_bits=ids_bits(len(candidates)), payload=candidates)
            msg = yield self._get(node, "community", "phase1")
            self.known_community[i] = [int(x) for x in msg.payload]
        yield self.env.process(self.fl_client(self.record.method, i, self.known_community[i]))

    def phase1_leader(self, own: np.ndarray) -> Proc:
        node = self.nodes[self.leader]
        adj = np.zeros((self.n, self.n), dtype=bool)
        adj[self.leader, own] = True
        for _ in range(self.n - 1):
            msg = yield self._get(node, "candidates", "phase1")
            adj[self.index[msg.src], msg.payload.astype(np.int64)] = True
        np.fill_diagonal(adj, False)
        adj = adj & adj.T
        t0 = time.perf_counter()
        found = find_communities(adj, self.exp.community_method, seed=derive_seed(self.seed, "communities"))
        wall = time.perf_counter() - t0
        yield self._compute(node, 0.0, lambda: wall, kind="communities", phase="phase1", round=0)
        self.record.adjacency, self.record.communities = adj, found
        self.record.method.groups = found
        for members in found:
            ids = np.array(members, dtype=np.uint16)
            for i in members:
                if i == self.leader:
                    self.known_community[i] = list(members)
                else:
                    self.net.send(node, self.nodes[i], kind="community", phase="phase1", round=0,
                                  payload_bits=ids_bits(len(ids)), payload=ids)
        self.communities_known.succeed(found)

    # ---------------------------------------------------------------- phase II / FedAvg
    def _aggregator_of(self, group: Sequence[int]) -> str:
        if self.aggregator == "server":
            assert self.server is not None
            return self.server
        return self.nodes[group[0]]

    def _start(self, run: FLRun, group: Sequence[int]) -> Ref:
        """The seeded weights a group's FedAvg starts from (every member knows them: no message)."""
        seed = derive_seed(self.seed, FL_SEED_TAG, "init", group[0])
        return self.learner.init(self.exp.phase2_model, seed, Stage(run.stage, 1))

    def _train(self, run: FLRun, i: int, rnd: int, model: Ref, prev: Ref | None) -> Ref:
        """Client i's round-`rnd` training from `model`, its Adam state going on from its update `prev`."""
        exp = self.exp
        ref = self.learner.train(
            i, exp.phase2_model, exp.epochs_in_round(rnd - 1), derive_seed(self.seed, FL_SEED_TAG, rnd - 1, i),
            stage=Stage(run.stage, rnd), init=model, opt=prev if exp.persist_optimizer else None)
        run.updates[(i, rnd)] = ref
        return ref

    def fl_client(self, run: FLRun, i: int, group: list[int]) -> Proc:
        """One client's FedAvg rounds: train, upload its update, wait for the new global model."""
        node = self.nodes[i]
        agg = self._aggregator_of(group)
        if agg == node:
            yield self.env.process(self.fl_aggregator(run, group, own=i))
            return
        model, prev = self._start(run, group), None
        for rnd in range(1, run.rounds + 1):
            if self.models_before_round:
                model = (yield self._get(node, "global", run.phase, rnd)).payload
            prev = self._train(run, i, rnd, model, prev)
            yield self._compute(node, self._flops(prev), self._trained(prev), kind="train", phase=run.phase,
                                round=rnd)
            self.net.send(node, agg, kind="update", phase=run.phase, round=rnd, payload_bits=self._bits(prev),
                          payload=prev)
            if not self.models_before_round:
                model = (yield self._get(node, "global", run.phase, rnd)).payload

    def fl_aggregator(self, run: FLRun, group: list[int], own: int | None) -> Proc:
        """The aggregator of `group` (a member when `own` is its index, else the server node)."""
        agg = self._aggregator_of(group)
        senders = [i for i in group if i != own]
        names = {self.nodes[i] for i in senders}
        model, prev = self._start(run, group), None
        run.models[(group[0], 1)] = model
        for rnd in range(1, run.rounds + 1):
            if self.models_before_round:  # round rnd's model: the initial one, then the average of round rnd - 1
                self._send_model(agg, senders, run, rnd, model)
            parts: list[tuple[int, Ref]] = []
            if own is not None:
                prev = self._train(run, own, rnd, model, prev)
                yield self._compute(agg, self._flops(prev), self._trained(prev), kind="train", phase=run.phase,
                                    round=rnd)
                parts.append((own, prev))
            for _ in senders:
                msg = yield self.net.inbox(agg).get(lambda m, rnd=rnd: m.kind == "update" and m.phase == run.phase
                                                    and m.round == rnd and m.src in names)
                parts.append((self.index[msg.src], msg.payload))
            model = self.learner.fedavg(parts, Stage(run.stage, rnd))
            run.models[(group[0], rnd + 1)] = model
            yield self._compute(agg, self._flops(model), lambda: 0.0, kind="aggregate", phase=run.phase, round=rnd)
            if not self.models_before_round:
                self._send_model(agg, senders, run, rnd, model)

    def _send_model(self, agg: str, members: Sequence[int], run: FLRun, rnd: int, model: Ref) -> None:
        """The aggregator sends `model` to each member, labelled round `rnd`."""
        for i in members:
            self.net.send(agg, self.nodes[i], kind="global", phase=run.phase, round=rnd,
                          payload_bits=self._bits(model), payload=model)

    def server_aggregators(self, run: FLRun) -> Proc:
        """The server's aggregator of every community, once the leader has told it the communities."""
        groups = yield self.communities_known
        yield simpy.AllOf(self.env, [self.env.process(self.fl_aggregator(run, g, own=None)) for g in groups])

    def federated(self, run: FLRun) -> Proc:
        """A FedAvg run over fixed groups (the ideal baseline): all clients start now."""
        procs = [self.env.process(self.fl_client(run, i, run.group_of(i))) for i in range(self.n)]
        if self.aggregator == "server":
            procs += [self.env.process(self.fl_aggregator(run, g, own=None)) for g in run.groups]
        yield simpy.AllOf(self.env, procs)

    # ---------------------------------------------------------------- the whole run
    def method(self) -> Proc:
        self._register_phase1()
        self.record.phase1_bits = [0] * self.n
        procs = [self.env.process(self.phase1_client(i)) for i in range(self.n)]
        if self.aggregator == "server":
            procs.append(self.env.process(self.server_aggregators(self.record.method)))
        yield simpy.AllOf(self.env, procs)

    def centralised(self) -> Proc:
        """Every client uploads its raw shard to the server, which trains one model on their union."""
        assert self.server is not None
        exp = self.exp
        self.record.upload_bits = [payload_bits_of(s.x) for s in self.learner.partition.clients]
        sends = [
            self.net.send(self.nodes[i], self.server, kind="raw_data", phase="centralised", round=0,
                          payload_bits=self.record.upload_bits[i], payload=i)
            for i in range(self.n)
        ]
        yield simpy.AllOf(self.env, sends)
        ref = self.learner.train(None, exp.phase2_model, exp.centralised_epochs, derive_seed(self.seed, "centralised"),
                                 stage=BASELINES)
        self.record.central = ref
        yield self._compute(self.server, self._flops(ref), self._trained(ref), kind="train", phase="centralised",
                            round=0)

    def local(self) -> Proc:
        """Each client trains alone (registered together: one batch when the first asks its epochs run)."""
        exp = self.exp
        refs = [self.learner.train(i, exp.phase2_model, exp.local_baseline_epochs, derive_seed(self.seed, "local", i),
                                   stage=BASELINES, patience=exp.patience, restore_best=exp.restore_best)
                for i in range(self.n)]
        self.record.local = refs
        yield simpy.AllOf(self.env, [
            self._compute(self.nodes[i], self._flops(r), self._trained(r), kind="train", phase="local", round=0)
            for i, r in enumerate(refs)
        ])

    def run_all(self) -> Proc:
        yield self.env.process(self.method())
        baselines = self.exp.baselines
        if "ideal" in baselines:
            run = FLRun("ideal", "ideal", self.exp.rounds, groups=self.learner.partition.true_groups())
            self.record.ideal = run
            yield self.env.process(self.federated(run))
        if "centralised" in baselines:
            yield self.env.process(self.centralised())
        if "local" in baselines:
            yield self.env.process(self.local())


def simulate(world: World, learner: Learner, exp: Experiment, *, clients: Sequence[str], server: str | None,
             seed: int) -> FedAD:
    """Run the method and `exp`'s baselines on the world's network until every phase has finished."""
    fed = FedAD(world, learner, exp, clients=clients, server=server, seed=seed)
    done = world.env.process(fed.run_all())
    world.env.run(until=done)
    return fed
