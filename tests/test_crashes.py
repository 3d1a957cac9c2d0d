"""Crashed nodes in the network, message statuses and cancelled computations, against hand-computed values.

Numbers (see tests/test_imperfect_links.py): one AE-5 model is W = 108,560 wire bits in 9 packets; on a 100 Mbps /
1 ms link alone it transmits in W / 1e8 = 1.0856 ms and arrives 1 ms later. TCP's handshake on that link takes
H = 2 x (1 ms + 624 / 1e8) = 2.01248 ms.
"""

from __future__ import annotations

import math

import polars as pl
import pytest
import simpy

from simfl.config import scenario_from_dict
from simfl.messages import MessageLost
from simfl.world import World, crash_faults

MODEL = 12868 * 8
TX = 108_560 / 1e8
H = 2.01248e-3
REL = 1e-12


def pair(handshake: bool = False, workload: str = "synthetic", faults=(), experiment=None) -> World:
    return World(scenario_from_dict({
        "name": "t", "workload": workload, "network": {"handshake": handshake},
        "nodes": [{"name": "a", "kind": "client"}, {"name": "b", "kind": "client"}, {"name": "s", "kind": "switch"}],
        "links": [{"a": "a", "b": "s", "bandwidth": "100 Mbps", "latency": "1 ms", "name": "as"},
                  {"a": "s", "b": "b", "bandwidth": "10 Gbps", "latency": "0 s", "name": "sb"}],
        "faults": list(faults),
        "experiment": {"classes": [0, 1], "clients_per_class": 1, "baselines": [], **(experiment or {})},
    }))


def send_at(w: World, t: float, out: dict, key: int, src: str = "a", dst: str = "b") -> None:
    def proc():
        yield w.env.timeout(t)
        try:
            out[key] = yield w.network.send(src, dst, kind="k", phase="p", round=0, payload_bits=MODEL)
        except MessageLost as e:
            out[key] = (e.message, w.env.now)

    w.env.process(proc())


def at(w: World, t: float, fn) -> None:
    def proc():
        yield w.env.timeout(t)
        fn()

    w.env.process(proc())


# the a -> s -> b route: 1 ms + 0 s of latency; the 10 Gbps hop adds P / 1e10 of store-and-forward (P = 12,304 bits)
SF = 12_304 / 1e10


def test_a_crashed_sender_loses_what_it_had_not_finished_transmitting():
    # #0 transmits from 0 at 100 Mbps; a crashes at 0.5 ms: 50,000 bits = 6,250 bytes sent, lost then. #1, queued
    # behind it, is lost with 0 bytes and no start.
    w = pair()
    w.network.allow_crashes()
    out: dict = {}
    send_at(w, 0.0, out, 0)
    send_at(w, 0.0, out, 1)
    at(w, 0.5e-3, lambda: w.network.crash("a"))
    w.env.run()
    (m0, t0), (m1, t1) = out[0], out[1]
    assert t0 == t1 == pytest.approx(0.5e-3, rel=REL)
    assert (m0.status, m0.wire_bytes, m0.t_start) == ("lost", 6_250, 0.0) and math.isnan(m0.t_deliver)
    assert (m1.status, m1.wire_bytes) == ("lost", 0) and math.isnan(m1.t_start)
    links = w.recorder.links_frame().filter(pl.col("src") == "a")
    assert links["bytes"].to_list() == [6_250]
    assert w.network.in_flight == 0 and w.network.totals()["messages_lost"] == 2


def b_down_until_3ms(sends_at_4ms: int) -> tuple[World, dict]:
    """b crashes at 0 and is back at 3 ms; a sends #0 at 0 and #1.. at 4 ms."""
    w = pair()
    w.network.allow_crashes()
    out: dict = {}
    at(w, 0.0, lambda: w.network.crash("b"))
    send_at(w, 0.0, out, 0)
    at(w, 3e-3, lambda: w.network.recover("b"))
    for k in range(sends_at_4ms):
        send_at(w, 4e-3, out, 1 + k)
    w.env.run()
    return w, out


def test_a_message_reaching_a_crashed_node_fails_there_and_a_recovered_node_gets_its_messages():
    # b is down from 0 to 3 ms: #0 (sent at 0) reaches it at TX + 1 ms + SF and fails (to_crashed, t_deliver then);
    # #1 sent at 4 ms is delivered at 4 ms + TX + 1 ms + SF.
    w, out = b_down_until_3ms(sends_at_4ms=1)
    m0, t0 = out[0]
    assert m0.status == "to_crashed" and m0.t_deliver == t0 == pytest.approx(TX + 1e-3 + SF, rel=REL)
    assert out[1].status == "delivered" and out[1].t_deliver == pytest.approx(4e-3 + TX + 1e-3 + SF, rel=REL)
    frame = w.recorder.messages_frame()
    assert frame["status"].to_list() == ["to_crashed", "delivered"]
    assert w.network.totals()["messages"] == 1 and w.network.totals()["messages_lost"] == 1


def test_a_crash_closes_the_connections_so_the_next_message_pays_the_handshake():
    # handshake on: #0 at 0 starts at H; b crashes at 5 ms and is back at 6 ms; #1 at 7 ms handshakes again.
    w = pair(handshake=True)
    w.network.allow_crashes()
    out: dict = {}
    send_at(w, 0.0, out, 0)
    at(w, 5e-3, lambda: w.network.crash("b"))
    at(w, 6e-3, lambda: w.network.recover("b"))
    send_at(w, 7e-3, out, 1)
    w.env.run()
    hs = 2 * (1e-3 + 624 / 1e8 + 624 / 1e10)  # the route there and back: both hops' header serialisation
    assert out[0].t_start == pytest.approx(hs, rel=REL)
    assert out[1].t_start == pytest.approx(7e-3 + hs, rel=REL)
    assert out[1].t_deliver == pytest.approx(7e-3 + hs + TX + 1e-3 + SF, rel=REL)


def test_crash_needs_allow_crashes_before_the_first_send():
    w = pair()
    w.network.send("a", "b", kind="k", phase="p", round=0, payload_bits=8)
    with pytest.raises(RuntimeError, match="before the first send"):
        w.network.allow_crashes()
    with pytest.raises(RuntimeError, match="allow_crashes"):
        w.network.crash("a")


def test_late_marks_only_delivered_messages():
    w, _ = b_down_until_3ms(sends_at_4ms=2)
    w.recorder.mark_late([0, 2])  # #0 failed: it stays to_crashed
    assert w.recorder.messages_frame()["status"].to_list() == ["to_crashed", "delivered", "late"]


def test_an_inbox_reset_drops_what_it_held_and_the_waits_on_it():
    w = pair()
    got = []

    def waiter():
        got.append((yield w.network.inbox("b").get(lambda m: m.kind == "never")))

    w.env.process(waiter())
    w.network.send("a", "b", kind="k", phase="p", round=0, payload_bits=8)
    w.env.run()
    held = w.network.mailboxes.reset("b")
    assert [m.kind for m in held] == ["k"] and w.network.inbox("b").items == []
    w.network.send("a", "b", kind="never", phase="p", round=0, payload_bits=8)
    w.env.run()
    assert got == [] and [m.kind for m in w.network.inbox("b").items] == ["never"]  # the old wait is gone


def test_a_cancelled_computation_records_its_row_up_to_then():
    # 1e9 FLOPs on a 10 GFLOP/s node take 0.1 s; cancelled at 0.025 s: a row of 0.025 s and 2.5e8 FLOPs, no other
    nodes = [{"name": "a", "kind": "client", "profile": "p"},
             {"name": "b", "kind": "client", "uplink": {"to": "a", "bandwidth": "1 Gbps"}}]
    w = World(scenario_from_dict({"name": "t", "workload": "synthetic", "profiles": {"p": "10 GFLOP/s"},
                                  "nodes": nodes}))
    ev = w.compute("a", 1e9, kind="train", phase="p", round=1)
    done = w.compute("a", 1e8, kind="score", phase="p", round=1)

    def stop():
        yield w.env.timeout(0.025)
        assert w.cancel(ev) and not w.cancel(ev)

    w.env.process(stop())
    w.env.run()
    rows = w.recorder.compute_frame()
    assert rows.select("kind", "t_start", "t_end", "flops").rows() == [
        ("score", 0.0, pytest.approx(0.01, rel=REL), 1e8), ("train", 0.0, 0.025, pytest.approx(2.5e8, rel=REL))]
    assert not w.cancel(done) and isinstance(ev, simpy.Event)


def test_node_faults_of_a_fedad_runs_clients_are_crashes_and_other_faults_outages():
    faults = [{"node": "a", "down": "1 s"}, {"node": "s", "down": "2 s"}, {"link": "sb", "down": "3 s"}]
    fed = pair(workload="fedad", faults=faults, experiment={"round_deadline": "1 s", "phase1_deadline": "1 s",
                                                            "failover_timeout": "2 s"})
    assert [f.name for f in fed.crashes] == ["a"]
    assert [f.name for f, _ in fed.topology.faults] == ["s", "sb"]
    syn = pair(faults=faults)
    assert syn.crashes == () and crash_faults(syn.scenario) == ()
    assert [f.name for f, _ in syn.topology.faults] == ["a", "s", "sb"]
