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

Conditions (`simfl.conditions`; docs/network-aware-learning.md has the rules). A round starts when the aggregator
knows its community (round 1) or sends the previous round's model, and closes when every invited member's update has
an outcome (arrived, or `Missing`) or at `round_deadline` after its start; fewer than `min_participants` updates to
average skip it (the previous model stands and is sent). Members are invited by a seeded sample (`fraction_fit`)
and sit rounds out by a seeded draw (`dropout`); a model goes to the invited of the round it starts (global: the
last to every member). Late updates are dropped or averaged at the next close (`late_updates`). A send the network
gives up on becomes a `Missing` at the receiver (and, for the answer it would have caused, at the sender). Every
close is a row of rounds.parquet. Unset, the conditions leave the protocol event for event as without them.

Phase I under losses and `phase1_deadline`: each wait ends when every peer's message has an outcome (arrived, or
`Missing`) or at the deadline; a pair without both one-sided results has no edge; a candidate group that misses
the leader leaves that client a loner, and so does a community message that never comes. Crashes (a client's or
server's single node fault): the node's processes, computations and inbox stop (`_crash`). A member that hears
nothing from its aggregator for `failover_timeout` (per round since its last model) suspects it; the lowest
unsuspected member takes over (`takeover` messages), reopens the round it awaited and runs the rest (`_receive`).
Phase I's leader likewise (`_await_community`, with `failover_timeout` set): a client that hears no community for
that long after sending its candidate group suspects the leader; the lowest client it does not suspect takes over
(`takeover` to the others), the others re-send it their groups, and it finds the communities in the groups that
reach it within `failover_timeout` (its own included; once every unsuspected client's group is in, at once). The
suspected leader's group never arrives: it is a loner, and gets no message. `simfl.failover` holds the views and
the rules for suspecting and following.

A node back from a crash (`up`) receives messages again; its volatile state (models, optimiser, processes) is
lost, what it learned in phase I is not. A client that knows its group in the FedAvg run under way sends `rejoin`
(2-byte ID) to the aggregator it knew (a former aggregator: to the lowest member it does not suspect besides
itself, which took its role over) and takes part from the first model that aggregator sends it, with a fresh
optimiser (`fl_rejoin`); the aggregator invites it again from the round whose model it sends next (`_admit`: a
member it never suspected was never left out). A client that crashed in phase I before it knew its community stays
out of the method (its peers' phase I went on without it); a server stays out of the run under way.

Rounds are numbered 1..r here and in the trace's `round` column (0: messages outside FedAvg rounds); seeds keep the
0-based round of `simfl.plan.derive_seed`'s tags.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from simfl import models
from simfl.communities import find_communities, one_sided
from simfl.conditions import DEADLINE, Deadline, Local, Missing, Participation, RoundRow, conditions_on
from simfl.config import Experiment
from simfl.errors import SimflError
from simfl.failover import REJOIN, TAKEOVER, Resume, View, due
from simfl.learner import BASELINES, PHASE1, THRESHOLD_BITS, Learner, Ref, Stage
from simfl.messages import LOST, Message, MessageLost, flag_bits, ids_bits, payload_bits_of
from simfl.order import send_order
from simfl.plan import FL_SEED_TAG, derive_seed
from simfl.world import World

Proc = Generator[simpy.Event, Any, Any]
# the kinds of message a process waits for (a raw shard's upload is awaited by its send event)
WAITED = frozenset({"model", "assoc", "candidates", "community", "update", "global"})


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
    members_get_final: bool = True  # detector "global": the last average is sent to every member
    group_key: dict[int, int] = field(default_factory=dict)  # client -> the lowest member of its group (its view)
    starts: dict[int, Ref] = field(default_factory=dict)  # group key -> its seeded start
    held: dict[int, Ref] = field(default_factory=dict)  # client -> the newest model it holds
    fit: dict[int, Ref] = field(default_factory=dict)  # client -> its last own update

    def group_of(self, i: int) -> list[int]:
        return next(g for g in self.groups if i in g)

    def _start_of(self, i: int) -> Ref:
        return self.starts[self.group_key.get(i, self.group_of(i)[0])]

    def final(self, i: int) -> Ref:
        """Client i's model after FedAvg (detector "global"): the newest model it holds when members get the last
        average; otherwise (detector "last_fit") the last average of its group, which only the aggregator has."""
        if self.members_get_final:
            return self.held.get(i) or self._start_of(i)
        key = self.group_key.get(i, self.group_of(i)[0])
        return self.models.get((key, self.rounds + 1)) or self.held.get(i) or self._start_of(i)

    def last_fit(self, i: int) -> Ref:
        """Client i's own last update (detector "last_fit"); one that never trained: the newest model it holds."""
        return self.fit.get(i) or self.held.get(i) or self._start_of(i)


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
        self.record = FedRecord(phase1=[], phase1_bits=[], method=self._fl_run("phase2", "method"))
        self._sided: np.ndarray | None = None
        self._walls: list[Callable[[], float]] = []  # each compute row's measured wall time, in recording order
        # conditions (simfl.conditions): participation draws, open deadlines, the rounds' rows
        self.conditioned = conditions_on(exp)
        self.part = Participation(exp, seed)
        self.rows: list[RoundRow] = []  # in the order they closed
        self._row_of: dict[tuple[str, str, int, int], RoundRow] = {}  # (phase, aggregator, round, member) -> row
        self._tokens = itertools.count()
        self._open: set[int] = set()  # deadline tokens whose wait is still open
        self.down: set[str] = set()  # nodes that are down now
        self.finished = False
        self.failovers = 0
        self._late_training: dict[str, simpy.Event] = {}  # aggregator -> its own training that outlived its round
        self.complete: dict[int, set[int]] = {}  # client -> the peers whose pair it has both results of (phase I)
        self._open_rows: dict[str, list[RoundRow]] = {}  # aggregator -> its rounds not closed yet
        self._procs: dict[str, list[simpy.Process]] = {}  # node -> its processes (with crashes only)
        self._views: dict[tuple[str, int], View] = {}  # (run's phase, member) -> its view of its aggregator
        self._fl_now: FLRun | None = None  # the FedAvg run under way (what a client back from a crash rejoins)
        self._rejoiners: list[simpy.Process] = []  # its clients back from a crash
        self._rejoin_wait: dict[str, int] = {}  # node back from a crash -> the token of its wait for a first model
        # a computation under way -> its wall-time note and wall (with crashes: a stopped one's row is recorded then)
        self._wall_of: dict[simpy.Event, tuple[Callable[[simpy.Event], None], Callable[[], float]]] = {}
        if world.crashes:
            self.net.allow_crashes()
        for f in world.crashes:
            self.env.timeout(f.down).callbacks.append(functools.partial(self._crash, f.name))
            if not math.isinf(f.up):
                self.env.timeout(f.up).callbacks.append(functools.partial(self._recover, f.name))

    # ---------------------------------------------------------------- helpers
    def _fl_run(self, phase: str, stage: str, groups: list[list[int]] | None = None) -> FLRun:
        return FLRun(phase, stage, self.exp.rounds, groups=groups or [], members_get_final=not self.models_before_round)

    def _send(self, src: str, dst: str, *, kind: str, phase: str, rnd: int, bits: int, payload: Any,
              reply: tuple[str, int] | None = None) -> simpy.Event:
        """`Network.send`; if the network gives up on the message, the receiver gets its `Missing`, and the sender
        the `Missing` of `reply` = (kind, round), the answer the message would have caused (from `dst`)."""
        ev = self.net.send(src, dst, kind=kind, phase=phase, round=rnd, payload_bits=bits, payload=payload)
        ev.callbacks.append(functools.partial(self._outcome, reply))
        return ev

    def _outcome(self, reply: tuple[str, int] | None, ev: simpy.Event) -> None:
        if ev.ok:
            return
        ev.defused = True
        m: Message = ev.value.message
        if m.status != LOST or m.src in self.down:  # it reached a crashed node, or its sender crashed: nobody knows
            return
        if m.dst not in self.down and m.kind in WAITED:
            self.net.inbox(m.dst).put(Missing(m.kind, m.phase, m.round, m.src, m.dst))
        if reply is not None:
            self.net.inbox(m.src).put(Missing(reply[0], m.phase, reply[1], m.dst, m.src))

    def _settled(self, ev: simpy.Event) -> simpy.Event:
        """An event that succeeds when `ev` has succeeded or failed."""
        out = self.env.event()
        ev.callbacks.append(lambda _ev: out.succeed())
        return out

    def _wait(self, node: str, kind: str, phase: str, rnd: int | None = None, srcs: set[str] | None = None,
              token: int | None = None) -> simpy.Event:
        """The next message (or `Missing`) of this kind, phase, round and senders in `node`'s inbox, or the
        `Deadline` of `token`."""
        def match(m: Any) -> bool:
            if m.kind == kind and m.phase == phase and (rnd is None or m.round == rnd) and (srcs is None
                                                                                             or m.src in srcs):
                return True
            return token is not None and m.kind == DEADLINE and m.token == token

        return self.net.inbox(node).get(match)

    def _deadline(self, node: str, seconds: float | None) -> int | None:
        """A timer that puts a `Deadline` in `node`'s inbox after `seconds` (None: no timer) unless its wait closed
        first (`_close`); returns its token."""
        if seconds is None:
            return None
        token = next(self._tokens)
        self._open.add(token)
        self.env.timeout(seconds).callbacks.append(lambda _ev: self._expire(node, token))
        return token

    def _expire(self, node: str, token: int) -> None:
        if token in self._open and not self.finished:
            self._open.discard(token)
            self.net.inbox(node).put(Deadline(token))

    def _close(self, token: int | None) -> None:
        self._open.discard(token)  # type: ignore[arg-type]

    def _get(self, node: str, kind: str, phase: str, rnd: int | None = None) -> simpy.Event:
        if rnd is None:
            return self.net.inbox(node).get(lambda m: m.kind == kind and m.phase == phase)
        return self.net.inbox(node).get(lambda m: m.kind == kind and m.phase == phase and m.round == rnd)

    def _compute(self, node: str, flops: float, wall: Callable[[], float], *, kind: str, phase: str,
                 round: int) -> simpy.Event:
        """`World.compute`, noting where the row's wall time will come from (known once the learner has run)."""
        ev = self.world.compute(node, flops, kind=kind, phase=phase, round=round)

        def note(_ev: simpy.Event) -> None:  # after the world's: one per row, in order
            self._walls.append(wall)
            self._wall_of.pop(ev, None)

        ev.callbacks.append(note)
        if self.world.crashes:
            self._wall_of[ev] = (note, wall)
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

    # ---------------------------------------------------------------- node crashes
    def _proc(self, node: str, gen: Proc) -> simpy.Process:
        """`env.process(gen)`, as a process of `node` that a crash of it stops (with crashes in the scenario)."""
        if not self.world.crashes:
            return self.env.process(gen)
        if node in self.down:  # a process of a node that is down never starts
            gen.close()
            gen = self._nothing()
        p = self.env.process(self._guard(gen))
        self._procs.setdefault(node, []).append(p)
        return p

    @staticmethod
    def _guard(gen: Proc) -> Proc:
        try:
            return (yield from gen)
        except simpy.Interrupt:  # its node crashed
            return None

    @staticmethod
    def _nothing() -> Proc:
        return None
        yield  # a generator that ends at once

    def _crash(self, node: str, _ev: simpy.Event | None = None) -> None:
        """`node` crashes: the network fails its messages, its computations stop (their rows end now), its
        processes and inbox are gone, and the rounds it was aggregating end "aborted"."""
        if self.finished:
            return
        self.down.add(node)
        self.net.crash(node)
        for ev in self.world.running(node):
            self.world.cancel(ev)
            note, wall = self._wall_of.pop(ev)
            ev.callbacks.remove(note)
            self._walls.append(wall)
        for p in self._procs.pop(node, []):
            if p.is_alive:
                p.interrupt("crash")
        self.net.mailboxes.reset(node)
        self._rejoin_wait.pop(node, None)
        for row in self._open_rows.pop(node, []):
            row.outcome, row.t_end = "aborted", self.env.now
            self.rows.append(row)

    def _recover(self, node: str, _ev: simpy.Event | None = None) -> None:
        """`node` is up again: it receives messages, and a client that knows its group in the FedAvg run under way
        rejoins it (`fl_rejoin`); one that crashed in phase I before it knew its community stays out of the method,
        and a server stays out of the run under way."""
        self.down.discard(node)
        self.net.recover(node)
        run, i = self._fl_now, self.index.get(node)
        if run is None or i is None or self.finished:
            return
        group = self.known_community.get(i) if run is self.record.method else run.group_of(i)
        if group is not None:
            self._rejoiners.append(self._proc(node, self.fl_rejoin(run, i, group)))

    def _end_fl(self, run: FLRun) -> Proc:
        """`run`'s FedAvg is over: the clients back from a crash that await a first model no aggregator sent them give
        up, those that take part again end their rounds; a group none of whose members ran (crashed in phase I) gets its
        seeded start (its members' models)."""
        self._fl_now = None
        for node, token in self._rejoin_wait.items():
            self._expire(node, token)
        alive = [p for p in self._rejoiners if p.is_alive]
        self._rejoiners = []
        if alive:
            yield simpy.AllOf(self.env, alive)
        for g in run.groups:
            if g[0] not in run.starts:
                self._start(run, g)

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
        """Client i's phase I: train, send its model to every peer, score the models that come, send each peer
        its verdict, take the verdicts, send its candidate group to the leader and learn its community; then its
        FedAvg rounds. Each wait ends when every peer's message has an outcome or at `phase1_deadline`."""
        mine = self.record.phase1[i]
        node = self.nodes[i]
        yield self._compute(node, self._flops(mine.train), self._trained(mine.train), kind="train",
                            phase="phase1", round=0)
        bits = self._bits(mine.train) + THRESHOLD_BITS
        self.record.phase1_bits[i] = bits
        for j in send_order(i, self.n, self.exp.send_order, self.seed):
            self._send(node, self.nodes[j], kind="model", phase="phase1", rnd=0, bits=bits, payload=mine,
                       reply=("assoc", 0))
        scored: set[int] = set()

        def score(msg: Message) -> Proc:  # as each model arrives
            theirs: ModelRef = msg.payload
            yield self._compute(node, self._score_flops(i, theirs), self._scored(theirs), kind="score",
                                phase="phase1", round=0)
            scored.add(theirs.client)
            self._send(node, msg.src, kind="assoc", phase="phase1", rnd=0, bits=flag_bits(1),
                       payload=Verdict(i, theirs.client))

        yield from self._phase1_take(node, "model", score)
        verdicts: list[Verdict] = [m.payload for m in (yield from self._phase1_take(node, "assoc"))]
        sided = self.sided()
        # the candidate group names the client itself and its associated peers (2-byte IDs), as the authors do;
        # a pair without both one-sided results has no edge
        self.complete[i] = {v.judge for v in verdicts if v.judge in scored}  # peers with both results here
        both = {j for j in self.complete[i] if sided[i, j] and sided[j, i]}
        candidates = np.array([j for j in range(self.n) if j == i or j in both], dtype=np.uint16)
        if i == self.leader:
            yield self._proc(node, self.phase1_leader(i, candidates))
        else:
            self._send(node, self.nodes[self.leader], kind="candidates", phase="phase1", rnd=0,
                       bits=ids_bits(len(candidates)), payload=candidates)
            if self.exp.failover_timeout is None:
                # the leader's own collection may take a whole deadline: this wait lasts two
                token = self._deadline(node, None if self.exp.phase1_deadline is None
                                       else 2 * self.exp.phase1_deadline)
                msg = yield self._wait(node, "community", "phase1", token=token)
                self._close(token)
                self._learn_community(i, msg)
            else:
                yield from self._await_community(i, candidates)
        yield self._proc(node, self.fl_client(self.record.method, i, self.known_community[i]))

    def _learn_community(self, i: int, msg: Message | Missing | Deadline) -> None:
        """Client i's community from the leader's message; none by the deadline, or the network gave up on it: a
        loner."""
        self.known_community[i] = [int(x) for x in msg.payload] if isinstance(msg, Message) else [i]

    def _await_community(self, i: int, candidates: np.ndarray) -> Proc:
        """Client i awaits its community from the leader (with `failover_timeout`): silence that long makes it
        suspect the leader, and the lowest client it does not suspect takes over (this one: it collects the groups
        and sends the communities); a `takeover` from a client makes that one the leader, and this one re-sends its
        candidate group to it."""
        node = self.nodes[i]
        view = View(self.nodes[self.leader])
        while True:
            token = self._deadline(node, self.exp.failover_timeout)
            msg = yield self.net.inbox(node).get(functools.partial(due, "community", "phase1", 0, view,
                                                                   set(self.nodes), token))
            self._close(token)
            if msg.kind == "community":
                self._learn_community(i, msg)
                return
            if msg.kind == TAKEOVER:
                view.follow(msg.src, self.nodes)
                self._send(node, view.agg, kind="candidates", phase="phase1", rnd=0, bits=ids_bits(len(candidates)),
                           payload=candidates)
            elif view.suspect(self.nodes) == node:
                yield self._proc(node, self.phase1_leader(i, candidates, frozenset(view.suspects)))
                return

    def _phase1_take(self, node: str, kind: str, each: Callable[[Message], Proc] | None = None,
                     peers: set[str] | None = None, seconds: float | None = None,
                     ) -> Generator[simpy.Event, Any, list[Message]]:
        """Take one message of `kind` from every peer (every other client, or `peers`) until each has an outcome
        (arrived, or `Missing`) or `seconds` (default `phase1_deadline`) pass from the start: the messages that
        arrived. `each` runs on each as it arrives, inside the wait."""
        waiting = set(peers) if peers is not None else {n for n in self.nodes if n != node}
        token = self._deadline(node, self.exp.phase1_deadline if seconds is None else seconds)
        got: list[Message] = []
        while waiting:
            msg = yield self._wait(node, kind, "phase1", srcs=waiting, token=token)
            if msg.kind == DEADLINE:
                break
            waiting.discard(msg.src)
            if isinstance(msg, Message):
                got.append(msg)
                if each is not None:
                    yield from each(msg)
        self._close(token)
        return got

    def phase1_leader(self, me: int, own: np.ndarray, suspects: frozenset[str] | None = None) -> Proc:
        """Client `me` as the leader: the collection of the candidate groups (a group that does not come by
        `phase1_deadline`, or that the network gave up on, is an empty row: that client is a loner), the
        communities, and their messages. `suspects`: a client that took a crashed leader's role over (it tells the
        clients it does not suspect, collects their re-sent groups until `failover_timeout` and leaves the suspects
        loners)."""
        node = self.nodes[me]
        peers = [k for k, n in enumerate(self.nodes) if k != me and n not in (suspects or ())]
        wait = self.exp.phase1_deadline
        if suspects is not None:
            wait = self.exp.failover_timeout
            self._announce(node, me, peers, "phase1", 0)
        adj = np.zeros((self.n, self.n), dtype=bool)
        adj[me, own] = True
        row = RoundRow("phase1", -1, 0, node, list(range(self.n)), sorted([me, *peers]), self.env.now,
                       None if wait is None else self.env.now + wait, failover=suspects is not None)
        for m in range(self.n):
            self._row_of[("phase1", node, 0, m)] = row
        self._open_rows.setdefault(node, []).append(row)
        got = yield from self._phase1_take(node, "candidates", peers={self.nodes[k] for k in peers}, seconds=wait)
        for msg in got:
            adj[self.index[msg.src], msg.payload.astype(np.int64)] = True
        row.arrived_ids = sorted([me] + [self.index[m.src] for m in got])
        np.fill_diagonal(adj, False)
        adj = adj & adj.T
        t0 = time.perf_counter()
        found = find_communities(adj, self.exp.community_method, seed=derive_seed(self.seed, "communities"))
        wall = time.perf_counter() - t0
        yield self._compute(node, 0.0, lambda: wall, kind="communities", phase="phase1", round=0)
        self.record.adjacency, self.record.communities = adj, found
        self.record.method.groups = found
        row.outcome, row.t_end = "collected", self.env.now
        self.rows.append(row)
        self._open_rows[node].remove(row)
        for members in found:
            ids = np.array(members, dtype=np.uint16)
            for i in members:
                if i == me:
                    self.known_community[i] = list(members)
                elif i in peers:
                    self._send(node, self.nodes[i], kind="community", phase="phase1", rnd=0,
                               bits=ids_bits(len(ids)), payload=ids)
        if not self.communities_known.triggered:  # (a falsely suspected leader's result came first)
            self.communities_known.succeed(found)

    def _announce(self, node: str, own: int, members: Sequence[int], phase: str, rnd: int) -> None:
        """`node` (client `own`) took a crashed lead's role over: a `takeover` (2-byte ID) to each of `members`."""
        self.failovers += 1
        for m in members:
            self._send(node, self.nodes[m], kind=TAKEOVER, phase=phase, rnd=rnd, bits=ids_bits(1), payload=own)

    # ---------------------------------------------------------------- phase II / FedAvg
    def _aggregator_of(self, group: Sequence[int]) -> str:
        if self.aggregator == "server":
            assert self.server is not None
            return self.server
        return self.nodes[group[0]]

    def _start(self, run: FLRun, group: Sequence[int]) -> Ref:
        """The seeded weights a group's FedAvg starts from (every member knows them: no message)."""
        seed = derive_seed(self.seed, FL_SEED_TAG, "init", group[0])
        ref = self.learner.init(self.exp.phase2_model, seed, Stage(run.stage, 1))
        run.starts[group[0]] = ref
        return ref

    def _train(self, run: FLRun, i: int, rnd: int, model: Ref, prev: Ref | None) -> Ref:
        """Client i's round-`rnd` training from `model`, its Adam state going on from its update `prev`."""
        exp = self.exp
        ref = self.learner.train(
            i, exp.phase2_model, exp.epochs_in_round(rnd - 1), derive_seed(self.seed, FL_SEED_TAG, rnd - 1, i),
            stage=Stage(run.stage, rnd), init=model, opt=prev if exp.persist_optimizer else None)
        run.updates[(i, rnd)] = ref
        run.fit[i] = run.held[i] = ref
        return ref

    def fl_client(self, run: FLRun, i: int, group: list[int]) -> Proc:
        """One client's FedAvg rounds: train when invited and available, upload its update, take the next model
        (or take the aggregator's role over: `_receive`)."""
        node = self.nodes[i]
        agg = self._aggregator_of(group)
        run.group_key[i] = group[0]
        if agg == node:
            yield self._proc(node, self.fl_aggregator(run, group, agg, own=i))
            return
        model = self._start(run, group)
        view = self._views[(run.phase, i)] = View(agg)
        yield from self._member(run, i, group, view, 1, model)

    def _member(self, run: FLRun, i: int, group: list[int], view: View, first: int, model: Ref | None,
                received: bool = False) -> Proc:
        """Client i's rounds from `first` on, holding `model` (`received`: round `first`'s model, detector
        "last_fit"; a client back from a crash starts there with a fresh optimiser state)."""
        node = self.nodes[i]
        prev = None
        for rnd in range(first, run.rounds + 1):
            invited = i in self.part.invited(group, rnd)
            if self.models_before_round:
                if not invited:
                    continue
                if not (received and rnd == first):
                    got = yield from self._receive(run, i, group, view, rnd, model, prev)
                    if view.took_over:
                        return
                    model = got
            if invited and model is not None and self.part.available(i, rnd):
                prev = self._train(run, i, rnd, model, prev)
                yield self._compute(node, self._flops(prev), self._trained(prev), kind="train", phase=run.phase,
                                    round=rnd)
                self._send(node, view.agg, kind="update", phase=run.phase, rnd=rnd, bits=self._bits(prev),
                           payload=prev)
            if not self.models_before_round and (rnd == run.rounds or i in self.part.invited(group, rnd + 1)):
                got = yield from self._receive(run, i, group, view, rnd, model, prev)
                if view.took_over:
                    return
                model = got

    def fl_rejoin(self, run: FLRun, i: int, group: list[int]) -> Proc:
        """Client i, back from a crash during `run`'s FedAvg, reconnects: `rejoin` (2-byte ID) to the aggregator it
        knew (a former aggregator: to the lowest member it does not suspect besides itself, which took the role
        over), then it waits for a model from it (following a `takeover`, to which it re-sends its `rejoin`) and
        takes part from that model's round on. It gives up when the run's FedAvg ends first."""
        node = self.nodes[i]
        order = [self.nodes[m] for m in group]
        view = self._views.get((run.phase, i)) or View(self._aggregator_of(group))
        if view.agg == node:
            lead = next((n for n in order if n != node and n not in view.suspects), None)
            if lead is None:
                return
            view = View(lead, set(view.suspects))
        self._views[(run.phase, i)] = view
        token = self._rejoin_wait[node] = next(self._tokens)
        self._open.add(token)
        while True:
            self._send(node, view.agg, kind=REJOIN, phase=run.phase, rnd=0, bits=ids_bits(1), payload=i)
            msg = yield self.net.inbox(node).get(functools.partial(due, "global", run.phase, None, view, set(order),
                                                                   token))
            if msg.kind != TAKEOVER:
                break
            view.follow(msg.src, order)
        self._close(token)
        self._rejoin_wait.pop(node, None)
        if not isinstance(msg, Message):  # the run's FedAvg ended, or the network gave up on the model
            return
        run.held[i] = msg.payload
        view.last = msg.round
        if self.models_before_round:  # the model of round msg.round, to train from
            yield from self._member(run, i, group, view, msg.round, msg.payload, received=True)
        else:  # the average of round msg.round, to train from in the next
            yield from self._member(run, i, group, view, msg.round + 1, msg.payload)

    def _receive(self, run: FLRun, i: int, group: list[int], view: View, rnd: int, model: Ref | None,
                 prev: Ref | None) -> Generator[simpy.Event, Any, Ref | None]:
        """The model labelled round `rnd` from the aggregator (None: the network gave up on it). With
        `failover_timeout`, silence that long makes the member suspect its aggregator: the lowest unsuspected member
        takes over (this one: it runs the aggregator from round `rnd` on, and `view.took_over` is set); a
        `takeover` from a member makes that member the aggregator, and this one re-sends its unanswered update."""
        node = self.nodes[i]
        order = [self.nodes[m] for m in group]
        while True:  # silence is expected for a round it sat out: the timer grows with the rounds since its last model
            timeout = self.exp.failover_timeout
            token = self._deadline(node, None if timeout is None else timeout * (rnd - view.last))
            msg = yield self.net.inbox(node).get(functools.partial(due, "global", run.phase, rnd, view, set(order),
                                                                   token))
            self._close(token)
            if msg.kind == "global":
                if isinstance(msg, Missing):
                    return None
                run.held[i] = msg.payload
                view.last = rnd
                return msg.payload
            if msg.kind == TAKEOVER:  # the aggregator and the members before the new one were suspected
                view.follow(msg.src, order)
                mine = run.updates.get((i, rnd))
                if not self.models_before_round and mine is not None:  # its update of the reopened round
                    self._send(node, view.agg, kind="update", phase=run.phase, rnd=rnd, bits=self._bits(mine),
                               payload=mine)
                continue
            if view.suspect(order) == node:  # silence: the next unsuspected member takes over
                view.took_over = True
                resume = Resume(rnd, model if model is not None else self._start(run, group), prev,
                                frozenset(view.suspects))
                yield self._proc(node, self.fl_aggregator(run, group, node, own=i, resume=resume))
                return None

    def fl_aggregator(self, run: FLRun, group: list[int], agg: str, own: int | None,
                      resume: Resume | None = None) -> Proc:
        """The aggregator `agg` of `group` (a member when `own` is its index, else the server node); `resume`: a
        member that took the role over, from the round it reopens (it tells the other unsuspected members)."""
        first, prev, suspects = 1, None, frozenset[str]()
        if resume is None:
            model = self._start(run, group)
            run.models[(group[0], 1)] = model
        else:
            first, model, prev, suspects = resume.round, resume.model, resume.prev, resume.suspects
            assert own is not None
            self._announce(agg, own, [m for m in group if self.nodes[m] not in suspects and m != own], run.phase,
                           first)
        live = [m for m in group if self.nodes[m] not in suspects]
        for rnd in range(first, run.rounds + 1):
            if self.models_before_round:
                self._admit(run, group, agg, live)
            invited = [m for m in self.part.invited(group, rnd) if m in live]
            if self.models_before_round:  # round rnd's model: the initial one, then the average of round rnd - 1
                self._send_model(agg, [m for m in invited if m != own], run, rnd, model)
            row = self._open_row(run, group, agg, rnd, invited, failover=resume is not None and rnd == first)
            parts, prev = yield from self._collect(run, agg, own, rnd, invited, model, prev, row)
            model = yield from self._average(run, group, agg, own, rnd, parts, model, row)
            if not self.models_before_round:
                self._admit(run, group, agg, live)
                targets = live if rnd == run.rounds else [m for m in self.part.invited(group, rnd + 1) if m in live]
                self._send_model(agg, [m for m in targets if m != own], run, rnd, model)

    def _admit(self, run: FLRun, group: list[int], agg: str, live: list[int]) -> None:
        """Members whose `rejoin` reached the aggregator (taken from its inbox) are invited again from the round
        whose model it sends next (with crashes only: a member it never suspected was never left out)."""
        if not self.world.crashes:
            return
        box = self.net.inbox(agg)
        back = [m for m in box.items if isinstance(m, Message) and m.kind == REJOIN and m.phase == run.phase
                and m.src in self.index and self.index[m.src] in group]
        for m in back:
            box.items.remove(m)
            if self.index[m.src] not in live:
                live.append(self.index[m.src])
        live.sort()

    def _collect(self, run: FLRun, agg: str, own: int | None, rnd: int, invited: list[int], model: Ref,
                 prev: Ref | None, row: RoundRow) -> Generator[simpy.Event, Any, tuple[list[tuple[int, Ref]],
                                                                                    Ref | None]]:
        """Round `rnd`'s updates that arrive in time: the aggregator's own (when it is an invited member), then
        every other invited member's until each has an outcome or the deadline passes."""
        token = self._deadline(agg, self.exp.round_deadline)
        parts: list[tuple[int, Ref]] = []
        waiting = {self.nodes[m] for m in invited if m != own}
        if own is not None and (own, rnd) in run.updates and row.failover:  # trained before it took over
            parts.append((own, run.updates[(own, rnd)]))
        elif own is not None and own in invited and not self._busy(agg):  # the aggregator role never sits out,
            prev = self._train(run, own, rnd, model, prev)  # unless its late training of an earlier round still runs
            flops = self._flops(prev)
            if row.t_deadline is None or self.env.now + flops / self.world.topology.flops(agg) <= row.t_deadline:
                yield self._compute(agg, flops, self._trained(prev), kind="train", phase=run.phase, round=rnd)
                parts.append((own, prev))
            else:  # its training ends after the deadline: its own update is late
                ev = self._late_training[agg] = self._compute(agg, flops, self._trained(prev), kind="train",
                                                              phase=run.phase, round=rnd)
                mine = Local("update", run.phase, rnd, agg, prev)
                ev.callbacks.append(lambda _ev: self._own_late(agg, mine, row))
        while waiting:
            msg = yield self._wait(agg, "update", run.phase, rnd, srcs=waiting, token=token)
            if msg.kind == DEADLINE:
                break
            waiting.discard(msg.src)
            if not isinstance(msg, Missing):
                parts.append((self.index[msg.src], msg.payload))
        self._close(token)
        return parts, prev

    def _busy(self, agg: str) -> bool:
        """Whether the aggregator's own training of an earlier round (late) still runs on its CPU."""
        ev = self._late_training.get(agg)
        return ev is not None and not ev.processed

    def _own_late(self, agg: str, mine: Local, row: RoundRow) -> None:
        """The aggregator's own training of a closed round ended: a late update, kept for the next close."""
        if agg not in self.down:
            row.late_ids.append(self.index[agg])
            self.net.inbox(agg).put(mine)

    def _average(self, run: FLRun, group: list[int], agg: str, own: int | None, rnd: int,
                 parts: list[tuple[int, Ref]], model: Ref, row: RoundRow) -> Generator[simpy.Event, Any, Ref]:
        """Close round `rnd`: FedAvg of the updates (and earlier late ones, with late_updates = "next_round"),
        or the previous model when fewer than min_participants; returns the model the round leaves."""
        row.arrived_ids = [c for c, _ in parts]
        if self.exp.late_updates == "next_round":
            parts = parts + self._fold(run, group, agg, rnd, parts, row)
        if len(parts) >= self.exp.min_participants:
            model = self.learner.fedavg(parts, Stage(run.stage, rnd))
            run.models[(group[0], rnd + 1)] = model
            row.outcome, row.weight = "averaged", float(model.n_train or 0)
            yield self._compute(agg, self._flops(model), lambda: 0.0, kind="aggregate", phase=run.phase, round=rnd)
        else:
            run.models[(group[0], rnd + 1)] = model
            row.outcome = "skipped"
        if own is not None:
            run.held[own] = model
        row.t_end = self.env.now
        self.rows.append(row)
        self._open_rows[agg].remove(row)
        return model

    def _fold(self, run: FLRun, group: list[int], agg: str, rnd: int, parts: list[tuple[int, Ref]],
              row: RoundRow) -> list[tuple[int, Ref]]:
        """Late updates of earlier rounds waiting in the aggregator's inbox: each member's newest, unless it has an
        update in this round (late_updates = "next_round")."""
        box = self.net.inbox(agg)
        names = {self.nodes[m] for m in group}
        late = [m for m in box.items if isinstance(m, Message | Local) and m.kind == "update"
                and m.phase == run.phase and m.round < rnd and m.src in names]
        newest: dict[int, Message | Local] = {}
        for m in late:
            box.items.remove(m)
            c = self.index[m.src]
            if c not in newest or m.round > newest[c].round:
                newest[c] = m
        self.world.recorder.mark_late(m.msg_id for m in late if isinstance(m, Message))
        for m in late:
            if isinstance(m, Message):  # the aggregator's own late update is on its row already
                self._row_of[(run.phase, agg, m.round, self.index[m.src])].late_ids.append(self.index[m.src])
        have = {c for c, _ in parts}
        folded = [(c, m) for c, m in sorted(newest.items()) if c not in have]
        for c, m in folded:
            row.folded_ids.append(c)
            self._row_of[(run.phase, agg, m.round, c)].folded_later += 1
        return [(c, m.payload) for c, m in folded]

    def _open_row(self, run: FLRun, group: list[int], agg: str, rnd: int, invited: list[int],
                  failover: bool = False) -> RoundRow:
        deadline = self.exp.round_deadline
        community = run.groups.index(group) if group in run.groups else -1
        row = RoundRow(run.phase, community, rnd, agg, list(group), list(invited), self.env.now,
                       None if deadline is None else self.env.now + deadline, failover=failover,
                       unavailable=sum(not self.part.available(m, rnd) for m in invited
                                       if self.nodes[m] != agg))
        for m in group:
            self._row_of[(run.phase, agg, rnd, m)] = row
        self._open_rows.setdefault(agg, []).append(row)
        return row

    def _send_model(self, agg: str, members: Sequence[int], run: FLRun, rnd: int, model: Ref) -> None:
        """The aggregator sends `model` to each member, labelled round `rnd`."""
        reply = ("update", rnd) if self.models_before_round else ("update", rnd + 1)
        for i in members:
            if self.nodes[i] in self._rejoin_wait and self._views[(run.phase, i)].agg == agg:
                del self._rejoin_wait[self.nodes[i]]  # back from a crash: this model (or its Missing) ends its wait
            self._send(agg, self.nodes[i], kind="global", phase=run.phase, rnd=rnd, bits=self._bits(model),
                       payload=model, reply=reply if reply[1] <= run.rounds else None)

    def server_aggregators(self, run: FLRun) -> Proc:
        """The server's aggregator of every community, once the leader has told it the communities."""
        groups = yield self.communities_known
        assert self.server is not None
        yield simpy.AllOf(self.env, [self._proc(self.server, self.fl_aggregator(run, g, self.server, own=None))
                                     for g in groups])

    def federated(self, run: FLRun) -> Proc:
        """A FedAvg run over fixed groups (the ideal baseline): all clients start now."""
        self._fl_now = run
        procs = [self._proc(self.nodes[i], self.fl_client(run, i, run.group_of(i))) for i in range(self.n)]
        if self.aggregator == "server":
            assert self.server is not None
            procs += [self._proc(self.server, self.fl_aggregator(run, g, self.server, own=None)) for g in run.groups]
        yield simpy.AllOf(self.env, procs)
        yield from self._end_fl(run)

    # ---------------------------------------------------------------- the whole run
    def method(self) -> Proc:
        self._register_phase1()
        self.record.phase1_bits = [0] * self.n
        self._fl_now = self.record.method
        procs = [self._proc(self.nodes[i], self.phase1_client(i)) for i in range(self.n)]
        if self.aggregator == "server":
            assert self.server is not None
            procs.append(self._proc(self.server, self.server_aggregators(self.record.method)))
        yield simpy.AllOf(self.env, procs)
        yield from self._end_fl(self.record.method)

    def centralised(self) -> Proc:
        """Every live client uploads its raw shard to the server, which trains one model on the union of those that
        arrived."""
        assert self.server is not None
        exp = self.exp
        self.record.upload_bits = [payload_bits_of(s.x) for s in self.learner.partition.clients]
        sends = [self._send(self.nodes[i], self.server, kind="raw_data", phase="centralised", rnd=0,
                            bits=self.record.upload_bits[i], payload=i)
                 for i in range(self.n) if self.nodes[i] not in self.down]  # a crashed client sends nothing
        try:
            yield simpy.AllOf(self.env, sends)
        except MessageLost:  # a shard the network gave up on: the others still come
            rest = [self._settled(e) for e in sends if not e.processed]
            yield simpy.AllOf(self.env, rest)
        arrived = tuple(self.index[e.value.src] for e in sends if e.ok)
        if not arrived:
            return
        # every shard: the union as always; fewer: the shards that reached the server
        data = None if len(arrived) == self.n else arrived
        ref = self.learner.train(data, exp.phase2_model, exp.centralised_epochs, derive_seed(self.seed, "centralised"),
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
            run = self._fl_run("ideal", "ideal", self.learner.partition.true_groups())
            self.record.ideal = run
            yield self.env.process(self.federated(run))
        if "centralised" in baselines:
            yield self.env.process(self.centralised())
        if "local" in baselines:
            yield self.env.process(self.local())

    def finish(self) -> None:
        """After the last phase: the messages still in flight arrive or fail and the computations under way (an
        aggregator's late training) end; every message no wait took is late (it reached a wait that had closed),
        and the rounds' rows get their late updates."""
        self.finished = True
        env = self.env
        while (self.net.totals()["messages_undelivered"] > 0 or self.world.running()) and env.peek() < math.inf:
            env.step()
        boxes = getattr(self.net, "mailboxes", None)
        late = [m for m in (boxes.held() if boxes is not None else []) if m.kind in WAITED or m.kind == REJOIN]
        self.world.recorder.mark_late(m.msg_id for m in late)
        for m in late:
            row = self._row_of.get((m.phase, m.dst, m.round, self.index.get(m.src, -1)))
            if row is not None and m.kind in ("update", "candidates"):
                row.late_ids.append(self.index[m.src])

    def stalled(self) -> str:
        """Why the run stopped before its end: the nodes still waiting (one line)."""
        boxes = getattr(self.net, "mailboxes", None)
        waiting = boxes.waiting() if boxes is not None else []
        who = f"{', '.join(waiting)} wait{'s' if len(waiting) == 1 else ''}" if waiting else "a node waits"
        return (f"the fedad run stalled at simulated {self.env.now:g} s: {who} for messages that will not come "
                "(lost after network.give_up, or from a member that missed its community); set "
                "experiment.round_deadline (and experiment.phase1_deadline) so that rounds close")

    def pairs_complete(self) -> int:
        """Phase-I pairs whose both clients had both one-sided results (all n (n - 1) / 2 without losses)."""
        return sum(1 for i, peers in self.complete.items() for j in peers if i < j and i in self.complete.get(j, ()))

    def rounds(self) -> list[dict[str, Any]]:
        """rounds.parquet's rows (`simfl.trace.ROUNDS_SCHEMA`), in the order the rounds closed."""
        return [r.as_dict() for r in self.rows]


def simulate(world: World, learner: Learner, exp: Experiment, *, clients: Sequence[str], server: str | None,
             seed: int) -> FedAD:
    """Run the method and `exp`'s baselines on the world's network until every phase has finished."""
    fed = FedAD(world, learner, exp, clients=clients, server=server, seed=seed)
    done = world.env.process(fed.run_all())
    try:
        world.env.run(until=done)
    except RuntimeError:
        if done.triggered or world.env.peek() < math.inf:  # not SimPy's "no scheduled events left": a bug
            raise
        raise SimflError(fed.stalled()) from None
    fed.finish()
    return fed
