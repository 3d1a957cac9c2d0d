"""The method's node processes over the simulated network, driven by a synthetic learning plan.

The plan holds real-shaped tensors (zeros) so that message sizes come from real state dicts, but nothing is trained:
these tests check the protocol's messages against hand-written closed forms and its causal order.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from simfl import models
from simfl.communities import association_matrix, find_communities, one_sided
from simfl.config import scenario_from_dict
from simfl.data import ClientShard, Partition
from simfl.learning import TrainResult
from simfl.plan import FLPlan, LearningPlan, Phase1Plan, derive_seed
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


def result(key: int, state: dict, flops: float = 1e6) -> TrainResult:
    return TrainResult(key=key, state=state, opt_state=None, n_train=100, epochs_run=1, losses=[1.0],
                       val_losses=[1.0], wall_s=0.01, flops=flops)


def zeros_state(model: str) -> dict[str, torch.Tensor]:
    return {k: torch.zeros_like(v) for k, v in models.build_model(model).state_dict().items()}


def synthetic_plan(p: int, n_classes: int, ratios: np.ndarray, tau: float, rounds: int,
                   groups_for_phase2: list[list[int]] | None = None) -> LearningPlan:
    n = p * n_classes
    shards = tuple(
        ClientShard(client=i, inlier_class=i // p, x=np.zeros((10, 28, 28), np.uint8),
                    labels=np.zeros(10, np.int64), is_outlier=np.zeros(10, bool), index=np.arange(10))
        for i in range(n)
    )
    part = Partition(classes=tuple(range(n_classes)), p=p, d=0.1, seed=0, clients=shards, tests={})
    s5 = zeros_state("ae5")
    payload = {**s5, "threshold": torch.zeros(1)}
    adj = association_matrix(ratios, tau)
    comms = find_communities(adj, "leiden", seed=derive_seed(5, "communities"))
    p1 = Phase1Plan(
        model="ae5", train=[result(i, s5) for i in range(n)], thresholds=np.zeros(n, np.float32),
        payloads=[payload] * n, payload_bits=[32 * (AE5 + 1)] * n, ratios=ratios,
        one_sided=one_sided(ratios, tau), adjacency=adj, communities=comms,
        score_flops=[1e5] * n, score_wall_s=0.0, community_wall_s=0.0,
    )
    groups = groups_for_phase2 or comms
    s7 = zeros_state("ae7")
    method = FLPlan(
        phase="phase2", groups=groups, rounds=[[result(i, s7) for i in range(n)] for _ in range(rounds)],
        update_bits=[[32 * AE7] * n for _ in range(rounds)],
        global_bits=[[32 * AE7] * len(groups) for _ in range(rounds)],
        final=[s7] * len(groups), initial_bits=[32 * AE7] * len(groups), aggregate_flops=[1e3] * len(groups),
    )
    return LearningPlan(partition=part, phase1=p1, method=method, ideal=None, local=None, central=None)


def block_ratios(p: int, n_classes: int) -> np.ndarray:
    """r[i, j] = 0.9 where i and j share a class (inside any tolerance), 0.5 otherwise (outside 6 %)."""
    cls = np.arange(p * n_classes) // p
    return np.where(cls[:, None] == cls[None, :], 0.9, 0.5)


def run(plan: LearningPlan, n: int, aggregator: str = "member", headers: bool = True, detector: str = "global"):
    sc = scenario(n, headers=headers)
    world = World(sc)
    fed = simulate(world, plan, clients=sc.clients[:n], server=sc.server, aggregator=aggregator,
                   community_method="leiden", seed=5, detector=detector)
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
    plan = synthetic_plan(p, n_classes, block_ratios(p, n_classes), 0.06, rounds)
    assert plan.phase1.communities == [list(range(c * p, (c + 1) * p)) for c in range(n_classes)]
    _, fed, msgs, _ = run(plan, n)
    # Eq. 1 with the ideal candidate groups (G_m = p), the model message carrying a 4-byte threshold:
    # n(n-1)(S_m + 4) + n(n-1) bits + 2 (n-1) p S_id, here in bits.
    expected_p1 = n * (n - 1) * 32 * (AE5 + 1) + n * (n - 1) + 2 * (n - 1) * p * 16
    assert bits(msgs, "phase1") == expected_p1
    assert bits(msgs, "phase1", "assoc") == n * (n - 1)
    assert msgs.filter(pl.col("phase") == "phase1").height == 2 * n * (n - 1) + 2 * (n - 1)
    # Eq. 3: 2 r (n - k) S_u with k = |C| communities
    assert bits(msgs, "phase2") == 2 * rounds * (n - n_classes) * 32 * AE7
    assert fed.leader_communities == plan.phase1.communities
    assert all(fed.known_community[i] == [c for c in plan.phase1.communities if i in c][0] for i in range(n))


def test_paper_setting_phase1_bytes_to_the_byte() -> None:
    """90 clients, 10 classes: 103,108,925.25 bytes (Eq. 1 with exact AE-5 size 103,076,885.25 + thresholds)."""
    plan = synthetic_plan(9, 10, block_ratios(9, 10), 0.06, 1)
    _, _, msgs, _ = run(plan, 90)
    assert bits(msgs, "phase1") / 8 == 103_108_925.25
    assert bits(msgs, "phase1") / 8 - 90 * 89 * 4 == 103_076_885.25
    assert bits(msgs, "phase2") / 8 == 2 * 1 * 80 * 113_412


def test_server_aggregator_follows_eq2() -> None:
    p, c, rounds = 3, 3, 2
    plan = synthetic_plan(p, c, block_ratios(p, c), 0.06, rounds)
    _, _, msgs, _ = run(plan, p * c, aggregator="server")
    ph2 = msgs.filter(pl.col("phase") == "phase2")
    assert bits(msgs, "phase2") == rounds * 2 * (p * c) * 32 * AE7  # r * sum 2|G_i| S_u
    assert set(ph2.filter(pl.col("kind") == "update")["dst"].to_list()) == {"server"}


def test_loners_and_uneven_candidates_bytes() -> None:
    """Client 5 associates with nobody: it sends a candidate group of itself and gets a community of one."""
    p, c = 3, 2
    r = block_ratios(p, c)
    r[5, :5] = 0.1  # client 5 rejects everybody (one side suffices to cut the edge)
    plan = synthetic_plan(p, c, r, 0.06, 2)
    assert plan.phase1.communities == [[0, 1, 2], [3, 4], [5]]
    _, _, msgs, _ = run(plan, 6)
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
    plan = synthetic_plan(p, c, block_ratios(p, c), 0.06, 2)
    _, _, msgs, comp = run(plan, p * c)
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
    plan = synthetic_plan(p, c, block_ratios(p, c), 0.06, rounds)
    _, _, msgs, comp = run(plan, n, aggregator=aggregator, detector="last_fit")
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


def test_same_plan_same_trace() -> None:
    plan = synthetic_plan(2, 3, block_ratios(2, 3), 0.06, 2)
    a = run(plan, 6)[2].drop("msg_id")
    b = run(plan, 6)[2].drop("msg_id")
    assert a.equals(b)
