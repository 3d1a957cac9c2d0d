"""The method and its baselines as SimPy node processes that send every message through the simulated network.

The learning results come from a `LearningPlan` (see `simfl.plan`); here each client is a process that spends
simulated compute time (FLOPs / its device's FLOP/s) and sends real payloads whose sizes come from the real
tensors. Phases run one after another on one network: the method (phase I, then phase II as each client learns
its community), then the ideal baseline, the centralised baseline and the local baseline.

Phase I, per client i: train; send (model, threshold) to every peer; score its own shard with each model it
receives and send that peer its one-sided association bit; combine both sides into its candidate group; send the
candidate group (2-byte IDs) to the leader (lowest ID), which builds the association graph, runs community
detection and sends every other client its community's member IDs.

Phase II, per community: each round all members train, the non-aggregator members send their update to the
aggregator (the lowest-ID member, or the server node), which averages them. With detector "global" every member
starts from the same seeded weights and the aggregator sends each new average back after its round (the last
one is the members' detector). With detector "last_fit" (the authors' Flower setup) the aggregator sends the
initial model before round 1 and each average before the next round; the last average is never sent and every
member keeps its own last local fit. Both send r models each way per member (the paper's Eq. 2 and 3).

Rounds are numbered 1..r here and in the trace's `round` column (0: messages outside FedAvg rounds); the plan's
per-round lists are 0-based, so round `rnd` reads entry `rnd - 1`.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import numpy as np
import simpy

from simfl.communities import find_communities
from simfl.messages import flag_bits, ids_bits
from simfl.order import send_order
from simfl.plan import FLPlan, LearningPlan, derive_seed
from simfl.world import World

Proc = Generator[simpy.Event, Any, Any]


class FedAD:
    """Node processes of one federated run over a `World`, replaying a `LearningPlan`."""

    def __init__(self, world: World, plan: LearningPlan, *, clients: Sequence[str], server: str | None,
                 aggregator: str, community_method: str, seed: int, detector: str = "global") -> None:
        self.world = world
        self.env = world.env
        self.net = world.network
        self.plan = plan
        self.nodes = list(clients)
        self.index = {name: i for i, name in enumerate(self.nodes)}
        self.server = server
        self.aggregator = aggregator
        # detector "last_fit": members receive the model to train from before each round (and keep their last
        # fit); detector "global": they receive each round's average after it
        self.models_before_round = detector == "last_fit"
        self.community_method = community_method
        self.seed = seed
        self.n = len(self.nodes)
        self.leader = 0
        self.known_community: dict[int, list[int]] = {}
        self.leader_communities: list[list[int]] | None = None

    # ---------------------------------------------------------------- helpers
    def _get(self, node: str, kind: str, phase: str, rnd: int | None = None) -> simpy.Event:
        if rnd is None:
            return self.net.inbox(node).get(lambda m: m.kind == kind and m.phase == phase)
        return self.net.inbox(node).get(lambda m: m.kind == kind and m.phase == phase and m.round == rnd)

    # ---------------------------------------------------------------- phase I
    def phase1_client(self, i: int) -> Proc:
        p1 = self.plan.phase1
        node = self.nodes[i]
        tr = p1.train[i]
        yield self.world.compute(node, tr.flops, kind="train", phase="phase1", round=0, wall_s=tr.wall_s)
        for j in send_order(i, self.n, self.world.scenario.experiment.send_order, self.seed):
            self.net.send(node, self.nodes[j], kind="model", phase="phase1", round=0,
                          payload_bits=p1.payload_bits[i], payload=p1.payloads[i])
        per_score_wall = p1.score_wall_s / max(1, self.n * self.n)
        for _ in range(self.n - 1):
            msg = yield self._get(node, "model", "phase1")
            j = self.index[msg.src]
            yield self.world.compute(node, p1.score_flops[i], kind="score", phase="phase1", round=0,
                                     wall_s=per_score_wall)
            self.net.send(node, msg.src, kind="assoc", phase="phase1", round=0,
                          payload_bits=flag_bits(1), payload=bool(p1.one_sided[i, j]))
        theirs: dict[int, bool] = {}
        for _ in range(self.n - 1):
            msg = yield self._get(node, "assoc", "phase1")
            theirs[self.index[msg.src]] = bool(msg.payload)
        # the candidate group names the client itself and its associated peers (2-byte IDs), as the authors do
        candidates = np.array([j for j in range(self.n) if j == i or (p1.one_sided[i, j] and theirs[j])],
                              dtype=np.uint16)
        if i == self.leader:
            yield self.env.process(self.phase1_leader(candidates))
        else:
            self.net.send(node, self.nodes[self.leader], kind="candidates", phase="phase1", round=0,
                          payload_bits=ids_bits(len(candidates)), payload=candidates)
            msg = yield self._get(node, "community", "phase1")
            self.known_community[i] = [int(x) for x in msg.payload]
        yield self.env.process(self.fl_client(self.plan.method, i))

    def phase1_leader(self, own: np.ndarray) -> Proc:
        p1 = self.plan.phase1
        node = self.nodes[self.leader]
        adj = np.zeros((self.n, self.n), dtype=bool)
        adj[self.leader, own] = True
        for _ in range(self.n - 1):
            msg = yield self._get(node, "candidates", "phase1")
            adj[self.index[msg.src], msg.payload.astype(np.int64)] = True
        np.fill_diagonal(adj, False)
        adj = adj & adj.T
        found = find_communities(adj, self.community_method, seed=derive_seed(self.seed, "communities"))
        if found != p1.communities:
            raise RuntimeError("the leader's communities differ from the planned ones (internal error)")
        yield self.world.compute(node, 0.0, kind="communities", phase="phase1", round=0,
                                 wall_s=p1.community_wall_s)
        self.leader_communities = found
        for members in found:
            ids = np.array(members, dtype=np.uint16)
            for i in members:
                if i == self.leader:
                    self.known_community[i] = list(members)
                else:
                    self.net.send(node, self.nodes[i], kind="community", phase="phase1", round=0,
                                  payload_bits=ids_bits(len(ids)), payload=ids)

    # ---------------------------------------------------------------- phase II / FedAvg
    def _aggregator_of(self, fl: FLPlan, g: int) -> str:
        if self.aggregator == "server":
            assert self.server is not None
            return self.server
        return self.nodes[fl.groups[g][0]]

    def fl_client(self, fl: FLPlan, i: int) -> Proc:
        """One client's FedAvg rounds: train, upload its update, wait for the new global model."""
        g = fl.group_of()[i]
        node = self.nodes[i]
        agg = self._aggregator_of(fl, g)
        if agg == node:
            yield self.env.process(self.fl_aggregator(fl, g, own=i))
            return
        for rnd in range(1, len(fl.rounds) + 1):
            r = fl.rounds[rnd - 1][i]
            if self.models_before_round:
                yield self._get(node, "global", fl.phase, rnd)
            yield self.world.compute(node, r.flops, kind="train", phase=fl.phase, round=rnd, wall_s=r.wall_s)
            self.net.send(node, agg, kind="update", phase=fl.phase, round=rnd,
                          payload_bits=fl.update_bits[rnd - 1][i], payload=r.state)
            if not self.models_before_round:
                yield self._get(node, "global", fl.phase, rnd)

    def fl_aggregator(self, fl: FLPlan, g: int, own: int | None) -> Proc:
        """The aggregator of group g (a member when `own` is its index, else the server node)."""
        agg = self._aggregator_of(fl, g)
        members = fl.groups[g]
        senders = [i for i in members if i != own]
        for rnd in range(1, len(fl.rounds) + 1):
            if self.models_before_round:  # round rnd's model: the initial one, then the average of round rnd - 1
                bits = fl.initial_bits[g] if rnd == 1 else fl.global_bits[rnd - 2][g]
                self._send_model(agg, senders, fl, g, rnd, bits)
            if own is not None:
                r = fl.rounds[rnd - 1][own]
                yield self.world.compute(agg, r.flops, kind="train", phase=fl.phase, round=rnd, wall_s=r.wall_s)
            for _ in senders:
                yield self._get(agg, "update", fl.phase, rnd)
            yield self.world.compute(agg, fl.aggregate_flops[g], kind="aggregate", phase=fl.phase, round=rnd)
            if not self.models_before_round:
                self._send_model(agg, senders, fl, g, rnd, fl.global_bits[rnd - 1][g])

    def _send_model(self, agg: str, members: Sequence[int], fl: FLPlan, g: int, rnd: int, bits: int) -> None:
        """Group g's aggregator sends a model of `bits` to each member, labelled round `rnd`."""
        for i in members:
            self.net.send(agg, self.nodes[i], kind="global", phase=fl.phase, round=rnd, payload_bits=bits, payload=g)

    def federated(self, fl: FLPlan) -> Proc:
        """A FedAvg run over fixed groups (the ideal baseline): all clients start now."""
        procs = [self.env.process(self.fl_client(fl, i)) for i in range(self.n)]
        if self.aggregator == "server":
            procs += [self.env.process(self.fl_aggregator(fl, g, own=None)) for g in range(len(fl.groups))]
        yield simpy.AllOf(self.env, procs)

    # ---------------------------------------------------------------- the whole run
    def method(self) -> Proc:
        procs = [self.env.process(self.phase1_client(i)) for i in range(self.n)]
        if self.aggregator == "server":
            procs += [self.env.process(self.fl_aggregator(self.plan.method, g, own=None))
                      for g in range(len(self.plan.method.groups))]
        yield simpy.AllOf(self.env, procs)

    def centralised(self) -> Proc:
        """Every client uploads its raw shard to the server, which trains one model on their union."""
        c = self.plan.central
        assert c is not None and self.server is not None
        sends = [
            self.net.send(self.nodes[i], self.server, kind="raw_data", phase="centralised", round=0,
                          payload_bits=c.upload_bits[i], payload=i)
            for i in range(self.n)
        ]
        yield simpy.AllOf(self.env, sends)
        yield self.world.compute(self.server, c.train.flops, kind="train", phase="centralised", round=0,
                                 wall_s=c.train.wall_s)

    def local(self) -> Proc:
        assert self.plan.local is not None
        yield simpy.AllOf(self.env, [
            self.world.compute(self.nodes[i], r.flops, kind="train", phase="local", round=0, wall_s=r.wall_s)
            for i, r in enumerate(self.plan.local)
        ])

    def run_all(self) -> Proc:
        yield self.env.process(self.method())
        if self.plan.ideal is not None:
            yield self.env.process(self.federated(self.plan.ideal))
        if self.plan.central is not None:
            yield self.env.process(self.centralised())
        if self.plan.local is not None:
            yield self.env.process(self.local())


def simulate(world: World, plan: LearningPlan, *, clients: Sequence[str], server: str | None,
             aggregator: str, community_method: str, seed: int, detector: str = "global") -> FedAD:
    """Replay the plan on the world's network until every phase has finished."""
    fed = FedAD(world, plan, clients=clients, server=server, aggregator=aggregator,
                community_method=community_method, seed=seed, detector=detector)
    done = world.env.process(fed.run_all())
    world.env.run(until=done)
    return fed
