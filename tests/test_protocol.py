"""The method's node processes over the simulated network, learning through a fake engine.

Message sizes come from the real models (AE-5, AE-7) and FLOPs from the real formulas, but nothing is trained: the
fake engine's cross-evaluation returns a given ratio matrix, so the communities are known in advance. These tests
check the protocol's messages against hand-written closed forms and its causal order.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from simfl.cache import NodeStore
from simfl.communities import association_matrix, find_communities
from simfl.config import Experiment, scenario_from_dict
from simfl.data import ClientShard, Partition
from simfl.learner import FakeEngine, Learner
from simfl.plan import derive_seed
from simfl.protocol import simulate
from simfl.world import World

AE5, AE7 = 3217, 28353  # parameters (simfl.models)


def scenario(n: int, *, aggregator: str = "member", headers: bool = True) -> object:
    return scenario_from_dict({
        "name": "t", "seed": 5, "workload": "synthetic",
        "network": {"headers": headers},
        "profiles": {"edge": "1 GFLOP/s", "server": "10 GFLOP/s"},
        "nodes": [{"name": "s1", "kind": "switch"},
                  {"name": "server", "kind": "server", "profile": "server",
                   "uplink": {"to": "s1", "bandwidth": "1 Gbps", "latency": "0.1 ms"}}],
        "node_groups": [{"prefix": "c", "count": n, "kind": "client", "profile": "edge",
                         "uplink": {"to": "s1", "bandwidth": "100 Mbps", "latency": "0.5 ms"}}],
    })


def learner(p: int, n_classes: int, ratios: np.ndarray, rounds: int, store: NodeStore | None = None,
            **exp: object) -> Learner:
    """A learner for p x n_classes clients of 10 blank images whose fake cross-evaluation returns `ratios`."""
    n = p * n_classes
    shards = tuple(
        ClientShard(client=i, inlier_class=i // p, x=np.zeros((10, 28, 28), np.uint8),
                    labels=np.zeros(10, np.int64), is_outlier=np.zeros(10, bool), index=np.arange(10))
        for i in range(n)
    )
    part = Partition(classes=tuple(range(n_classes)), p=p, d=0.1, seed=0, clients=shards, tests={})
    fields = {"local_epochs": (1,), "tau": 0.06, "baselines": (), "workers": 0, **exp}
    e = Experiment(classes=tuple(range(n_classes)), clients_per_class=p, rounds=rounds, **fields)  # type: ignore
    fake = FakeEngine(ratios)
    return Learner(e, part, store, engine=lambda: fake, engine_kind="fake")


def communities_of(ratios: np.ndarray, tau: float = 0.06) -> list[list[int]]:
    """What the leader must find: Leiden on the association graph, the run's seed."""
    return find_communities(association_matrix(ratios, tau), "leiden", seed=derive_seed(5, "communities"))


def block_ratios(p: int, n_classes: int) -> np.ndarray:
    """r[i, j] = 0.9 where i and j share a class (inside any tolerance), 0.5 otherwise (outside 6 %)."""
    cls = np.arange(p * n_classes) // p
    return np.where(cls[:, None] == cls[None, :], 0.9, 0.5)


def run(lr: Learner, headers: bool = True):
    n = lr.partition.n_clients
    sc = scenario(n, headers=headers)
    world = World(sc)
    fed = simulate(world, lr, lr.exp, clients=sc.clients[:n], server=sc.server, seed=5)
    return world, fed, world.recorder.messages_frame(), world.recorder.compute_frame()


def bits(messages: pl.DataFrame, phase: str, kind: str | None = None) -> int:
    m = messages.filter(pl.col("phase") == phase)
    if kind:
        m = m.filter(pl.col("kind") == kind)
    return int(m["payload_bits"].sum())


@pytest.mark.parametrize("p,n_classes", [(9, 10), (2, 3), (6, 5)])
def test_phase1_and_phase2_bytes_equal_closed_forms(p: int, n_classes: int) -> None:
    n = p * n_classes
    rounds = 3
    lr = learner(p, n_classes, block_ratios(p, n_classes), rounds)
    _, fed, msgs, _ = run(lr)
    assert fed.record.communities == [list(range(c * p, (c + 1) * p)) for c in range(n_classes)]
    # Eq. 1 with the ideal candidate groups (G_m = p), the model message carrying a 4-byte threshold:
    # n(n-1)(S_m + 4) + n(n-1) bits + 2 (n-1) p S_id, here in bits.
    expected_p1 = n * (n - 1) * 32 * (AE5 + 1) + n * (n - 1) + 2 * (n - 1) * p * 16
    assert bits(msgs, "phase1") == expected_p1
    assert bits(msgs, "phase1", "assoc") == n * (n - 1)
    assert msgs.filter(pl.col("phase") == "phase1").height == 2 * n * (n - 1) + 2 * (n - 1)
    # Eq. 3: 2 r (n - k) S_u with k = |C| communities
    assert bits(msgs, "phase2") == 2 * rounds * (n - n_classes) * 32 * AE7
    assert all(fed.known_community[i] == [c for c in fed.record.communities if i in c][0] for i in range(n))


def test_paper_setting_phase1_bytes_to_the_byte() -> None:
    """90 clients, 10 classes: 103,108,925.25 bytes (Eq. 1 with exact AE-5 size 103,076,885.25 + thresholds)."""
    _, _, msgs, _ = run(learner(9, 10, block_ratios(9, 10), 1))
    assert bits(msgs, "phase1") / 8 == 103_108_925.25
    assert bits(msgs, "phase1") / 8 - 90 * 89 * 4 == 103_076_885.25
    assert bits(msgs, "phase2") / 8 == 2 * 1 * 80 * 113_412


def test_server_aggregator_follows_eq2() -> None:
    p, c, rounds = 3, 3, 2
    _, _, msgs, _ = run(learner(p, c, block_ratios(p, c), rounds, aggregator="server"))
    ph2 = msgs.filter(pl.col("phase") == "phase2")
    assert bits(msgs, "phase2") == rounds * 2 * (p * c) * 32 * AE7  # r * sum 2|G_i| S_u
    assert set(ph2.filter(pl.col("kind") == "update")["dst"].to_list()) == {"server"}


def test_loners_and_uneven_candidates_bytes() -> None:
    """Client 5 associates with nobody: it sends a candidate group of itself and gets a community of one."""
    p, c = 3, 2
    r = block_ratios(p, c)
    r[5, :5] = 0.1  # client 5 rejects everybody (one side suffices to cut the edge)
    assert communities_of(r) == [[0, 1, 2], [3, 4], [5]]
    _, fed, msgs, _ = run(learner(p, c, r, 2))
    assert fed.record.communities == [[0, 1, 2], [3, 4], [5]]
    cand = msgs.filter((pl.col("phase") == "phase1") & (pl.col("kind") == "candidates"))
    # non-leaders 1..5 send themselves + peers: 3, 3, 2, 2, 1 IDs
    assert sorted(cand["payload_bits"].to_list()) == sorted(16 * k for k in (3, 3, 2, 2, 1))
    comm = msgs.filter((pl.col("phase") == "phase1") & (pl.col("kind") == "community"))
    assert sorted(comm["payload_bits"].to_list()) == sorted(16 * k for k in (3, 3, 2, 2, 1))
    # phase II: only communities of 3 and 2 exchange updates, 2 rounds: 2 r (n - k) S_u with n=6, k=3
    assert bits(msgs, "phase2") == 2 * 2 * 3 * 32 * AE7


def test_causal_order() -> None:
    """Every client scores only after training, starts phase II only after it knows its community."""
    p, c = 2, 3
    _, _, msgs, comp = run(learner(p, c, block_ratios(p, c), 2))
    names = scenario(p * c).clients
    for i in range(p * c):
        node = names[i]
        mine = comp.filter(pl.col("node") == node)
        train1 = mine.filter((pl.col("phase") == "phase1") & (pl.col("kind") == "train"))
        first_model_out = msgs.filter((pl.col("src") == node) & (pl.col("kind") == "model"))["t_send"].min()
        assert first_model_out >= train1["t_end"][0] - 1e-12
        p2 = mine.filter(pl.col("phase") == "phase2")["t_start"].min()
        if i == 0:
            known = msgs.filter((pl.col("dst") == node) & (pl.col("kind") == "candidates"))["t_deliver"].max()
        else:
            known = msgs.filter((pl.col("dst") == node) & (pl.col("kind") == "community"))["t_deliver"][0]
        assert p2 >= known - 1e-12
        # each round's training starts after the previous global model arrived (non-aggregators)
        if i % p:
            g = msgs.filter((pl.col("dst") == node) & (pl.col("kind") == "global")).sort("round")
            starts = mine.filter((pl.col("phase") == "phase2") & (pl.col("kind") == "train")).sort("round")
            assert starts["t_start"][1] >= g["t_deliver"][0] - 1e-12


@pytest.mark.parametrize("aggregator", ["member", "server"])
def test_last_fit_detector_pulls_models_before_rounds(aggregator: str) -> None:
    """detector = last_fit: the aggregator sends the model of round t before round t (the initial one first) and
    never the last average; the bytes stay those of Eq. 3 (member) and Eq. 2 (server)."""
    p, c, rounds = 3, 2, 3
    n = p * c
    _, _, msgs, comp = run(learner(p, c, block_ratios(p, c), rounds, aggregator=aggregator, detector="last_fit"))
    members = n if aggregator == "server" else n - c  # who talks to an aggregator
    assert bits(msgs, "phase2") == 2 * rounds * members * 32 * AE7
    names = scenario(n).clients
    ph2 = msgs.filter(pl.col("phase") == "phase2")
    for i in range(n):
        if aggregator == "member" and i % p == 0:
            continue  # the lowest-ID member aggregates
        node = names[i]
        got = ph2.filter((pl.col("dst") == node) & (pl.col("kind") == "global")).sort("round")
        sent = ph2.filter((pl.col("src") == node) & (pl.col("kind") == "update")).sort("round")
        assert got["round"].to_list() == sent["round"].to_list() == list(range(1, rounds + 1))
        train = comp.filter((pl.col("node") == node) & (pl.col("phase") == "phase2")).sort("round")
        for t in range(rounds):  # round t's model arrives before round t's training; the update leaves after it
            assert train["t_start"][t] >= got["t_deliver"][t] - 1e-12
            assert sent["t_send"][t] >= train["t_end"][t] - 1e-12
        # nothing reaches the member after its last update: it keeps its own last fit
        assert got["t_send"].max() < sent["t_send"].max()


def test_same_learning_same_trace() -> None:
    a = run(learner(2, 3, block_ratios(2, 3), 2))[2]
    b = run(learner(2, 3, block_ratios(2, 3), 2))[2]
    assert a.equals(b)


def _fake(lr: Learner) -> FakeEngine:
    return lr.engine


@pytest.mark.parametrize("aggregator", ["member", "server"])
def test_learning_is_asked_for_once_in_phase_one_and_averages_are_the_groups(aggregator: str) -> None:
    """Phase I is computed when the first client combines its verdicts (train, threshold scores, cross rows: three
    calls); phase II asks nothing of the learner (sizes and FLOPs are known ahead), so its rounds are computed
    when a value is first wanted, round by round. Each community's average is of its own members' updates (the
    fake's w[0] is the client, weights equal): even with one server aggregating every community at once."""
    p, c, rounds = 3, 2, 2
    lr = learner(p, c, block_ratios(p, c), rounds, aggregator=aggregator)
    _, fed, msgs, _ = run(lr)
    assert _fake(lr).calls == [("train", list(range(6))), ("score", list(range(6))), ("cross", list(range(6)))]
    run_ = fed.record.method
    finals = [lr.value(run_.final(i), "state")["w"].tolist() for i in range(6)]
    assert finals == [[1.0, 2.0]] * 3 + [[4.0, 2.0]] * 3  # mean client of each group, depth = 2 rounds
    assert [name for name, _ in _fake(lr).calls[3:]] == ["train", "train"]  # one call per round
    # the phase-I messages carry references; the verdicts name who judged whose model
    p1 = msgs.filter(pl.col("phase") == "phase1")
    assert p1.height == 2 * 6 * 5 + 2 * 5
    assert fed.record.phase1_bits == [32 * (AE5 + 1)] * 6


def test_compute_rows_get_the_learners_wall_times() -> None:
    """Every compute row's wall_s comes from the learner once it has run (the fake engine reports 0 for training,
    the cross-evaluation's measured time is shared by the n x n scorings): one value per row, in order."""
    lr = learner(2, 2, block_ratios(2, 2), 1)
    world, fed, _, comp = run(lr)
    walls = fed.wall_times()
    assert len(walls) == comp.height
    kinds = comp["kind"].to_list()
    score = [w for w, k in zip(walls, kinds, strict=True) if k == "score"]
    total = sum(lr.meta(m.cross)["wall_s"] for m in fed.record.phase1)
    assert len(score) == 4 * 3 and sum(score) == pytest.approx(total * 3 / 4)  # each model scored by 3 peers
    assert all(w == 0.0 for w, k in zip(walls, kinds, strict=True) if k in ("train", "aggregate"))
    world.recorder.set_compute_wall_s(walls)
    assert world.recorder.compute_frame()["wall_s"].to_list() == walls


def test_a_longer_run_computes_only_its_new_rounds(tmp_path) -> None:
    """Cache reuse is per computation: a run of 3 rounds after one of 2 (same store) reads phase I and rounds 1-2
    back and computes round 3 alone; changing round 2's epochs recomputes from round 2 on."""
    p, c = 2, 2

    def run_with(rounds: int, local_epochs: tuple[int, ...]) -> list:
        lr = learner(p, c, block_ratios(p, c), rounds, NodeStore(tmp_path), local_epochs=local_epochs)
        _, fed, _, _ = run(lr)
        for i in range(p * c):  # every client's final average (what the evaluation asks for)
            lr.value(fed.record.method.final(i), "state")
        return [name for name, _ in _fake(lr).calls] if lr.stats.computed else []

    assert run_with(2, (1,)) == ["train", "score", "cross", "train", "train"]
    assert run_with(3, (1,)) == ["train"]  # round 3 only
    assert run_with(3, (1,)) == []
    assert run_with(3, (1, 2)) == ["train", "train"]  # rounds 2 and 3 train 2 epochs now: round 1 is read back
