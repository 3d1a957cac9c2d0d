"""The send order (simfl/order.py) of phase I and of the synthetic all-pairs exchange."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest
from test_protocol import block_ratios, learner, scenario

from simfl.config import scenario_from_dict
from simfl.incast import find_incast
from simfl.order import SEND_ORDERS, send_order
from simfl.plan import derive_seed
from simfl.protocol import simulate
from simfl.workloads import pattern_pairs, run_synthetic
from simfl.world import World


def test_id_and_rotated_by_hand():
    assert send_order(2, 5) == send_order(2, 5, "id") == [0, 1, 3, 4]
    assert send_order(2, 5, "rotated") == [3, 4, 0, 1]
    assert send_order(4, 5, "rotated") == [0, 1, 2, 3]
    assert send_order(0, 5, "rotated") == send_order(0, 5, "id") == [1, 2, 3, 4]
    assert send_order(0, 1, "rotated") == send_order(0, 1, "random") == []
    # rotated: in step k every client sends to a different peer (each receiver has one sender at a time)
    n = 7
    for k in range(n - 1):
        assert sorted(send_order(i, n, "rotated")[k] for i in range(n)) == list(range(n))


def test_random_is_a_seeded_permutation_per_sender():
    n, seed = 9, 11
    for i in range(n):
        got = send_order(i, n, "random", seed)
        peers = [j for j in range(n) if j != i]
        assert sorted(got) == peers
        want = np.random.default_rng(derive_seed(seed, "send_order", i)).permutation(np.array(peers))
        assert got == want.tolist()
        assert send_order(i, n, "random", seed) == got  # pure
    orders = {tuple(send_order(i, 30, "random", seed)) for i in range(3)}
    assert len(orders) == 3  # per sender
    assert send_order(0, 30, "random", 1) != send_order(0, 30, "random", 2)  # per run seed


def test_bad_arguments():
    with pytest.raises(ValueError, match="sender 5 is not one of the 5 clients"):
        send_order(5, 5)
    with pytest.raises(ValueError, match="unknown order 'backwards' \\(one of id, rotated, random\\)"):
        send_order(0, 5, "backwards")
    assert SEND_ORDERS == ("id", "rotated", "random")


def test_allpairs_pairs_follow_the_order():
    c = ["a", "b", "c", "d"]
    assert pattern_pairs("allpairs", c, None) == [(x, y) for x in c for y in c if x != y]  # "id": as always
    assert pattern_pairs("allpairs", c, None, "rotated") == [
        ("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("b", "a"),
        ("c", "d"), ("c", "a"), ("c", "b"), ("d", "a"), ("d", "b"), ("d", "c")]
    assert pattern_pairs("gather", c, "a", "rotated") == [("b", "a"), ("c", "a"), ("d", "a")]  # allpairs only


def synthetic(order: str, seed: int = 4):
    sc = scenario_from_dict({
        "name": "o", "seed": seed, "workload": "synthetic",
        "nodes": [{"name": "s", "kind": "switch"}],
        "node_groups": [{"prefix": "c", "count": 6, "uplink": {"to": "s", "bandwidth": "100 Mbps",
                                                                "latency": "0.5 ms"}}],
        "synthetic": {"send_order": order},
    })
    w = World(sc)
    summary = run_synthetic(w, sc)
    return summary, w.recorder.messages_frame()


def test_synthetic_allpairs_sends_in_the_order_and_times_stay_fluid():
    """In the fluid model every message is its own flow and all start together: the order changes the message
    IDs, not one time."""
    base, m_id = synthetic("id")
    names = [f"c{i}" for i in range(6)]
    assert list(zip(m_id["src"], m_id["dst"])) == [(a, b) for a in names for b in names if a != b]
    for order in ("rotated", "random"):
        s, m = synthetic(order)
        pairs = list(zip(m["src"], m["dst"]))
        assert pairs == [(names[i], names[j]) for i in range(6) for j in send_order(i, 6, order, 4)]
        assert s["patterns"][0]["duration_s"] == base["patterns"][0]["duration_s"]
        key = ["src", "dst"]
        assert m.drop("msg_id").sort(key).equals(m_id.drop("msg_id").sort(key))
    assert synthetic("random")[1].equals(synthetic("random")[1])
    assert not synthetic("random", seed=5)[1].equals(synthetic("random")[1])


@pytest.mark.parametrize("order", SEND_ORDERS)
def test_phase1_models_go_out_in_the_order(order):
    p, k = 2, 3
    n = p * k
    lr = learner(p, k, block_ratios(p, k), 1, send_order=order)
    sc = scenario(n)
    world = World(sc)
    simulate(world, lr, lr.exp, clients=sc.clients[:n], server=sc.server, seed=5)
    models = world.recorder.messages_frame().filter(pl.col("kind") == "model")
    assert list(zip(models["src"], models["dst"])) == [
        (sc.clients[i], sc.clients[j]) for i in range(n) for j in send_order(i, n, order, 5)]


def test_phase1_incast_disappears_with_the_rotated_order():
    """30 clients train alike and send their 29 models (9 packets each) at once. id: all bursts of a step go to one
    client, 29 x 9 = 261 packets into its port; rotated: one burst at a time per receiver."""
    p, k = 3, 10
    n = p * k
    found = {}
    for order in ("id", "rotated"):
        lr = learner(p, k, block_ratios(p, k), 1, send_order=order)
        sc = scenario(n)
        sc = sc.replace(experiment=dataclasses.replace(sc.experiment, send_order=order))
        world = World(sc)
        simulate(world, lr, lr.exp, clients=sc.clients[:n], server=sc.server, seed=5)
        found[order] = find_incast(world.recorder.messages_frame(), world.topology, sc)
    [w] = found["id"]
    assert (w.phase, w.port, w.flows, w.packets) == ("phase1", "s1>c00 (link c00-s1)", 29, 261)
    assert found["rotated"] == []
