"""Imperfect links against hand-computed values: loss (the Mathis cap and retransmissions), outages (stall, resume,
reroute, give-up), asymmetric links and cells, capacity traces, jitter, the TCP handshake; their scenario keys and
errors; determinism and event counts.

Numbers used throughout (see tests/test_network.py): one AE-5 model is 12,868 payload bytes in 9 packets,
W = 108,560 wire bits, first packet P = 1,538 bytes = 12,304 bits; a header-only packet is 78 bytes = 624 bits.
The model's formulas are in simfl/network.py's docstring; every expectation below is worked from them by hand (the
tests never call the formulas' code to get an expected value).
"""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import polars as pl
import pytest

from simfl.config import load_scenario, scenario_from_dict
from simfl.errors import SimflError
from simfl.faults import Fault
from simfl.linkmodels import CapacityTrace, Loss
from simfl.messages import MessageLost
from simfl.runner import run_scenario
from simfl.topology import Topology
from simfl.world import World

MODEL = 12868 * 8
W = 108_560
P = 12_304
H = 624  # bits of a header-only packet
REL = 1e-12


def scenario(nodes, links=(), cells=(), groups=(), faults=(), network=None, seed=0, source="<dict>"):
    net = {"handshake": False, **(network or {})}
    return scenario_from_dict({"name": "t", "workload": "synthetic", "seed": seed, "network": net,
                               "nodes": list(nodes), "links": list(links), "cells": list(cells),
                               "node_groups": list(groups), "faults": list(faults)}, source=source)


def node(name, kind="client", **kw):
    return {"name": name, "kind": kind, **kw}


def link(a, b, bw="100 Mbps", lat="1 ms", name=None, **kw):
    return {"a": a, "b": b, "bandwidth": bw, "latency": lat, "name": name or f"{a}-{b}", **kw}


def pair(network=None, faults=(), **kw) -> World:
    """a -(100 Mbps, 1 ms, and the given keys)- b."""
    return World(scenario([node("a"), node("b")], [link("a", "b", name="ab", **kw)], faults=faults,
                          network=network))


def send_at(w: World, t: float, src: str, dst: str, out: dict, key, bits: int = MODEL) -> None:
    """Send src->dst at time t; out[key] is the delivered Message, or the lost one (its MessageLost caught)."""

    def proc():
        if t:
            yield w.env.timeout(t)
        try:
            out[key] = yield w.network.send(src, dst, kind="k", phase="p", round=0, payload_bits=bits)
        except MessageLost as e:
            out[key] = (e.message, w.env.now)

    w.env.process(proc())


def link_row(w: World, src: str, dst: str) -> dict:
    links = w.recorder.links_frame()
    return links.filter((pl.col("src") == src) & (pl.col("dst") == dst)).row(0, named=True)


# ------------------------------------------------------------------------------------------------------ loss
def test_lossy_link_is_capped_at_the_mathis_rate_and_pays_its_retransmissions():
    # One 100-packet message (146,000 payload bytes: 100 x 1460) on a 100 Mbps / 1 ms link losing 5% of packets.
    # Retransmissions: round(100 x 0.05 / 0.95) = round(5.263) = 5 full packets of 1,538 bytes = 7,690 bytes;
    # wire bytes 146,000 + 100 x 78 + 7,690 = 161,490.
    # Cap: RTT = (1 ms + 12,304 / 1e8) there + (1 ms + 624 / 1e8) back = 2.12928 ms;
    # 12,304 / RTT x sqrt(3 / (2 x 0.05)) = 12,304 / 2.12928e-3 x sqrt(30) = 31.65 Mbps < 100 Mbps: it binds.
    # (Without the timeouts' draws: the cap and the retransmissions alone.)
    w = pair(loss=0.05, network={"loss_timeouts": False})
    out = {}
    send_at(w, 0.0, "a", "b", out, 0, bits=146_000 * 8)
    w.env.run()
    m = out[0]
    assert (m.n_packets, m.retransmitted_bytes, m.wire_bytes) == (100, 7_690, 161_490)
    cap = 12_304 / 2.12928e-3 * math.sqrt(30)
    assert m.t_tx == pytest.approx(161_490 * 8 / cap, rel=1e-12)  # 0.0408176... s
    assert m.t_deliver == pytest.approx(m.t_tx + 1e-3, rel=1e-12)
    assert link_row(w, "a", "b")["bytes"] == 161_490
    assert w.network.totals()["retransmitted_bytes"] == 7_690


def test_retransmissions_are_whole_packets_and_add_up_to_the_expectation():
    # Three 9-packet models in one flow at 5% loss: 9 x 0.05 / 0.95 = 0.47368 expected each. Running totals
    # 0.474, 0.947, 1.421 round (half up) to 0, 1, 1: the messages are charged 0, 1 and 0 packets of 1,538 bytes.
    w = pair(loss=0.05)
    out = {}
    for i in range(3):
        send_at(w, 0.0, "a", "b", out, i)
    w.env.run()
    assert [out[i].retransmitted_bytes for i in range(3)] == [0, 1_538, 0]
    assert [out[i].wire_bytes for i in range(3)] == [13_570, 15_108, 13_570]


def test_route_loss_compounds_over_hops_and_a_burst_model_counts_by_its_stationary_rate():
    # a -s- b: two hops, each losing packets as a Gilbert-Elliott channel with good 0, bad 0.5, bursts of 4 and
    # gaps of 196 packets: stationary (196 x 0 + 4 x 0.5) / 200 = 0.01 per hop; the route: 1 - 0.99^2 = 0.0199.
    # One 1,000-packet message (1,460,000 B): round(1,000 x 0.0199 / 0.9801) = round(20.304) = 20 packets.
    # RTT = 2 x (1 ms + 12,304 / 1e8) + 2 x (1 ms + 624 / 1e8) = 4.25856 ms;
    # cap = 12,304 / 4.25856e-3 x sqrt(1.5 / 0.0199) = 7.932 Mbps.
    burst = {"good": 0.0, "bad": 0.5, "burst": 4, "gap": 196}
    sc = scenario([node("s", "switch"), node("a"), node("b")],
                  [link("a", "s", burst_loss=burst), link("s", "b", burst_loss=burst)],
                  network={"loss_timeouts": False})
    assert sc.links[0].loss == Loss(0.0, 0.5, 4.0, 196.0) and sc.links[0].loss.rate == pytest.approx(0.01)
    w = World(sc)
    out = {}
    send_at(w, 0.0, "a", "b", out, 0, bits=1_460_000 * 8)
    w.env.run()
    m = out[0]
    assert m.retransmitted_bytes == 20 * 1_538 and m.wire_bytes == 1_460_000 + 1_000 * 78 + 20 * 1_538
    cap = 12_304 / 4.25856e-3 * math.sqrt(1.5 / 0.0199)
    # delivered L + P S later: 2 ms + 12,304 x (2 / 1e8 - 1 / 1e8)
    assert m.t_deliver == pytest.approx(m.wire_bytes * 8 / cap + 2e-3 + 1.2304e-4, rel=1e-12)


def test_a_capped_flow_leaves_the_rest_of_the_bottleneck_to_the_others():
    # a (lossy uplink, 5%) and b send to c through s; every link 100 Mbps / 1 ms. a's flow is capped at the Mathis
    # rate of its route a-s-c: p = 1 - 0.95 x 1 = 0.05; RTT = 2 x (1 ms + 123.04 us) + 2 x (1 ms + 6.24 us) =
    # 4.25856 ms; cap = 12,304 / 4.25856e-3 x sqrt(30) = 15.825 Mbps. Max-min: b gets the rest of s -> c.
    sc = scenario([node("s", "switch"), node("a"), node("b"), node("c")],
                  [link("a", "s", loss=0.05), link("b", "s"), link("c", "s")])
    w = World(sc)
    out = {}
    send_at(w, 0.0, "a", "c", out, "a", bits=146_000 * 8)  # 100 packets: 5 retransmitted, 161,490 wire bytes
    send_at(w, 0.0, "b", "c", out, "b")
    w.env.run()
    cap = 12_304 / 4.25856e-3 * math.sqrt(30)
    assert out["b"].t_tx == pytest.approx(W / (1e8 - cap), rel=1e-12)
    # after b ends, a is still at its cap (the link is free but the cap binds)
    assert out["a"].t_tx == pytest.approx(161_490 * 8 / cap, rel=1e-12)


def star(n, loss, network=None, seed=0) -> World:
    """Clients c0.. (zero-padded) around a switch s, uplinks 100 Mbps / 1 ms losing `loss` towards s (loss_up); the
    handshake on. Route ci-s-cj: p = `loss` there and back."""
    up = {"to": "s", "bandwidth": "100 Mbps", "latency": "1 ms", "loss_up": loss}
    return World(scenario([node("s", "switch")], groups=[{"prefix": "c", "count": n, "uplink": up}],
                          network={"handshake": True, **(network or {})}, seed=seed))


def test_a_short_message_pays_the_drawn_syn_and_tail_timeouts_whose_mean_is_the_closed_form():
    # Each of the 1,980 ordered pairs of 45 clients sends one 9-packet model, 20 s apart (alone on its path, each
    # on a new connection). Route ci-s-cj: p = 0.01 there and back, q = 1 - 0.99^2 = 0.0199 per SYN / SYN-ACK
    # exchange. Lossless base: H = 2 x 2 x (1 ms + 624 / 1e8) = 4.02496 ms; RTT = 2 x (1 ms + 12,304 / 1e8) +
    # 2 x (1 ms + 624 / 1e8) = 4.25856 ms, cap = 12,304 / RTT x sqrt(150) = 35.39 Mbps (binds); retransmissions
    # round(9 x 0.01 / 0.99) = 0, so t_deliver = t_send + H + W / cap + 2 ms + P / 1e8. The timeouts add
    # syn_timeout (2^k - 1) (k failed exchanges) and, the message ending its burst, rto (2^j - 1) when one of its
    # last 3 packets is lost (j = 1 + the retransmissions lost again); rto = max(200 ms, 3 RTT) = 0.2 s, or 3 s
    # after a failed SYN. The draws are replayed here from the network's generator, in the order the network makes
    # them (seed 4: among them a backed-off tail, two failed SYNs, and a tail after a failed SYN).
    w = star(45, 0.01, seed=4)
    pairs = [(i, j) for i in range(45) for j in range(45) if i != j]
    out = {}
    for n, (i, j) in enumerate(pairs):
        send_at(w, n * 20.0, f"c{i:02d}", f"c{j:02d}", out, n)
    w.env.run()
    base = 4.02496e-3 + W / (12_304 / 4.25856e-3 * math.sqrt(150)) + 2e-3 + P / 1e8
    rng = random.Random("simfl tcp timeouts 4")
    extra = []
    for n in range(len(pairs)):
        k = 0
        while rng.random() < 0.0199:
            k += 1
        wait = 1.0 * (2 ** k - 1)
        if rng.random() < 1 - 0.99 ** 3:
            j = 1
            while rng.random() < 0.01:
                j += 1
            wait += (3.0 if k else 0.2) * (2 ** j - 1)
        extra.append(wait)
        m = out[n]
        assert m.t_deliver - m.t_send == pytest.approx(base + wait, rel=1e-9), n
        assert m.retransmitted_bytes == 0 and m.wire_bytes == W // 8
    assert {0.2, 0.6, 1.0, 3.0, 4.0} <= {round(e, 9) for e in extra}
    # the closed form: E = syn_timeout q / (1 - 2 q) + (1 - 0.99^3) / (1 - 2 p) x (0.2 (1 - q) + 3 q)
    #                    = 0.0207248 + 0.029701 / 0.98 x 0.25572 = 0.0284750 s; the mean of 1,980 draws has a
    # standard deviation of about 0.15 / sqrt(1,980) = 3.4 ms
    assert sum(extra) / len(extra) == pytest.approx(0.0284750, abs=0.012)


def test_timeouts_leave_lossless_routes_and_queued_messages_alone():
    # c0's uplink loses nothing, c1's 30%: c0's message (sent first, alone) takes the lossless closed form
    # H + W / C + L + P S although the network draws timeouts for c1's. With loss_timeouts = false c1's message
    # takes the cap and retransmissions alone: round(9 x 0.3 / 0.7) = round(3.857) = 4 packets of 1,538 bytes,
    # cap = 12,304 / 4.25856e-3 x sqrt(5) = 6.460 Mbps.
    up = {"to": "s", "bandwidth": "100 Mbps", "latency": "1 ms"}
    for timeouts in (True, False):
        w = World(scenario([node("s", "switch"), node("a", uplink=up), node("c0", uplink=up),
                            node("c1", uplink={**up, "loss": 0.3})],
                           network={"handshake": True, "loss_timeouts": timeouts}))
        out = {}
        send_at(w, 0.0, "c0", "a", out, 0)
        send_at(w, 1.0, "c1", "a", out, 1)
        w.env.run()
        assert out[0].t_deliver == pytest.approx(4.02496e-3 + W / 1e8 + 2e-3 + P / 1e8, rel=REL)
        assert out[1].retransmitted_bytes == 4 * 1_538
    wire = 8 * (W // 8 + 4 * 1_538)
    assert out[1].t_deliver - 1.0 == pytest.approx(4.02496e-3 + wire / (12_304 / 4.25856e-3 * math.sqrt(5)) + 2e-3
                                                   + P / 1e8, rel=1e-9)
    # with the timeouts, 40 messages queued at once on a lossy route: only the last (its burst's end) may wait a
    # tail timeout, every other one is delivered when it has finished transmitting, L + P S later
    w = star(2, 0.3, seed=3)
    got = {}
    for i in range(40):
        send_at(w, 0.0, "c0", "c1", got, i)
    w.env.run()
    for i in range(39):
        assert got[i].t_deliver == pytest.approx(got[i].t_tx + 2e-3 + P / 1e8, rel=REL)
    assert w.network.totals()["retransmitted_bytes"] == sum(got[i].retransmitted_bytes for i in range(40))


# ------------------------------------------------------------------------------------------------------ outages
def test_an_outage_delays_a_transfer_by_exactly_the_outage():
    # The link is down from 0.5 ms to 20.5 ms: the transfer stalls with 58,560 bits left and ends 20 ms late.
    w = pair(faults=[{"link": "ab", "down": "0.5 ms", "up": "20.5 ms"}])
    out = {}
    send_at(w, 0.0, "a", "b", out, 0)
    send_at(w, 0.005, "b", "a", out, 1)  # sent during the outage: it waits for the link
    w.env.run()
    assert out[0].t_tx == pytest.approx(W / 1e8 + 0.020, rel=1e-12)
    assert out[0].t_deliver == pytest.approx(W / 1e8 + 0.020 + 1e-3, rel=1e-12)
    assert out[1].t_start == pytest.approx(0.0205, rel=1e-12)
    assert out[1].t_deliver == pytest.approx(0.0205 + W / 1e8 + 1e-3, rel=1e-12)
    row = link_row(w, "a", "b")
    assert (row["bytes"], row["messages"]) == (13_570, 1)
    assert row["busy_s"] == pytest.approx(W / 1e8, rel=1e-9)  # a stalled flow does not keep the link busy


def test_a_repeating_outage_and_the_handshake_that_waits_for_it():
    # Down for 2 ms every 10 ms from 1 ms on (1-3, 11-13, ...); handshake on: 2 x (1 ms + 624 / 1e8) = 2.01248 ms.
    # Sent at 0, the handshake is under way when the link goes at 1 ms: it starts again when the link is back at
    # 3 ms, so the message starts at 5.01248 ms and ends transmitting 1.0856 ms later.
    w = pair(network={"handshake": True}, faults=[{"link": "ab", "start": "1 ms", "every": "10 ms",
                                                   "duration": "2 ms"}])
    out = {}
    send_at(w, 0.0, "a", "b", out, 0)
    send_at(w, 0.0105, "a", "b", out, 1)  # the same flow later: connected, no handshake; stalls 11 .. 13 ms
    w.env.run()
    assert out[0].t_start == pytest.approx(3e-3 + 2.01248e-3, rel=1e-12)
    assert out[0].t_tx == pytest.approx(3e-3 + 2.01248e-3 + W / 1e8, rel=1e-12)
    # #1 starts at 10.5 ms, sends 50,000 bits by 11 ms, the rest (58,560) from 13 ms
    assert out[1].t_start == pytest.approx(0.0105, rel=1e-12)
    assert out[1].t_tx == pytest.approx(0.013 + 58_560 / 1e8, rel=1e-12)


def test_a_handshake_that_up_windows_keep_cutting_short_is_given_up_on():
    # Down 1 ms every 3 ms from 0 (0-1, 3-4, ...): up-windows of 2 ms, shorter than the 2.01248 ms handshake, which
    # starts again at each return and never completes. give_up = 0.1 s counts from the first stall (at 0): the
    # message is lost at the first stall from 0.1 s on, the outage at 34 x 3 ms = 0.102 s; nothing was sent.
    w = pair(network={"handshake": True, "give_up": "0.1 s"},
             faults=[{"link": "ab", "every": "3 ms", "duration": "1 ms"}])
    out = {}
    send_at(w, 0.0, "a", "b", out, 0)
    w.env.run()
    m, t = out[0]
    assert t == pytest.approx(0.102, rel=1e-12)
    assert (m.status, m.wire_bytes) == ("lost", 0) and math.isnan(m.t_start)


def test_hops_are_those_of_the_route_a_message_finished_transmitting_on():
    # a-b direct (10 ms) or a-s-b (20 + 20 ms); ab goes down at 5 ms. #0 (10 kB) has finished transmitting by then
    # (under 1 ms at 100 Mbps) and arrives over ab at t_tx + 10 ms: 1 hop, though its flow is rerouted before it
    # arrives. #1 (100 kB) is still transmitting at 5 ms: it moves to a-s-b, 2 hops, 40 ms of latency.
    w = World(scenario([node("a"), node("b"), node("s", "switch")],
                       [link("a", "b", lat="10 ms", name="ab"), link("a", "s", lat="20 ms"),
                        link("s", "b", lat="20 ms")],
                       faults=[{"link": "ab", "down": "5 ms"}]))
    out = {}
    send_at(w, 0.0, "a", "b", out, 0, bits=80_000)
    send_at(w, 0.0, "a", "b", out, 1, bits=800_000)
    w.env.run()
    assert out[0].t_tx < 0.005 < out[0].t_deliver < 0.005 + 0.04  # it arrived over ab, after the reroute
    assert (out[0].hops, out[1].hops) == (1, 2)
    assert out[1].t_deliver - out[1].t_tx > 0.04


def test_give_up_fails_the_message_at_the_stated_time_and_the_queue_goes_on():
    # The link goes down at 0.5 ms for good; give_up = 2 s. #0 has sent 0.5 ms x 100 Mbps = 6,250 bytes: it is
    # lost at 2.0005 s. #1, queued behind it, begins then (no route: it stalls at once) and is lost at 4.0005 s.
    w = pair(network={"give_up": "2 s"}, faults=[{"link": "ab", "down": "0.5 ms"}])
    got = []

    def listener():
        while True:
            got.append((yield w.network.losses("b").get()).msg_id)

    w.env.process(listener())
    out = {}
    send_at(w, 0.0, "a", "b", out, 0)
    send_at(w, 0.0, "a", "b", out, 1)
    w.env.run()
    (m0, t0), (m1, t1) = out[0], out[1]
    assert t0 == pytest.approx(2.0005, rel=1e-12) and t1 == pytest.approx(4.0005, rel=1e-12)
    assert (m0.status, m0.wire_bytes, m0.t_start) == ("lost", 6_250, 0.0)
    assert math.isnan(m0.t_tx) and math.isnan(m0.t_deliver)
    assert (m1.status, m1.wire_bytes) == ("lost", 0) and math.isnan(m1.t_start)
    assert got == [0, 1]
    frame = w.recorder.messages_frame()
    assert frame["status"].to_list() == ["lost", "lost"] and frame["t_deliver"].is_nan().all()
    assert link_row(w, "a", "b")["bytes"] == 6_250
    assert w.network.totals()["messages_lost"] == 2 and w.network.in_flight == 0


def test_an_unhandled_loss_ends_the_simulation_with_message_lost():
    w = pair(network={"give_up": "1 s"}, faults=[{"link": "ab", "down": "0 s"}])
    w.network.send("a", "b", kind="k", phase="p", round=0, payload_bits=8)
    with pytest.raises(MessageLost, match="message 0 a->b .k. lost"):
        w.env.run()


def ring(slow="100 Mbps", faults=()):
    """a - b - c fast (100 Mbps, 1 ms); a - d - c the other way (links of `slow`, 1 ms)."""
    return World(scenario([node(n) for n in "abcd"],
                          [link("a", "b", name="ab"), link("b", "c", name="bc"),
                           link("c", "d", bw=slow, name="cd"), link("d", "a", bw=slow, name="da")], faults=faults))


def test_a_flow_is_rerouted_around_a_down_link_and_back_with_its_remaining_bits():
    # a -> c goes a-b-c (the smaller name wins the tie). a-b is down from 0.5 ms to 3 ms; the way round a-d-c is
    # 10 Mbps. 0 .. 0.5 ms: 50,000 bits at 100 Mbps; 0.5 .. 3 ms: 25,000 at 10 Mbps; then back on a-b-c, the last
    # 33,560 bits at 100 Mbps: t_tx = 3 ms + 335.6 us; delivered 2 ms + P / 1e8 later (route a-b-c).
    w = ring("10 Mbps", faults=[{"link": "ab", "down": "0.5 ms", "up": "3 ms"}])
    out = {}
    send_at(w, 0.0, "a", "c", out, 0)
    w.env.run()
    assert out[0].t_tx == pytest.approx(3e-3 + 3.356e-4, rel=1e-12)
    assert out[0].t_deliver == pytest.approx(3e-3 + 3.356e-4 + 2e-3 + 1.2304e-4, rel=1e-12)
    # bytes: 6,250 then 4,195 on a-b-c, 3,125 on a-d-c; the message counts where it finished
    assert (link_row(w, "a", "b")["bytes"], link_row(w, "b", "c")["bytes"]) == (10_445, 10_445)
    assert (link_row(w, "a", "d")["bytes"], link_row(w, "d", "c")["bytes"]) == (3_125, 3_125)
    assert (link_row(w, "a", "b")["messages"], link_row(w, "a", "d")["messages"]) == (1, 0)


def test_a_flow_stays_rerouted_while_the_link_is_down():
    # a-b down from 0.5 ms for good: the rest, 58,560 bits, goes a-d-c at 10 Mbps; delivered 2 ms + P (1/1e7 +
    # 1/1e7 - 1/1e7) = 2 ms + 1.2304 ms later.
    w = ring("10 Mbps", faults=[{"link": "ab", "down": "0.5 ms"}])
    out = {}
    send_at(w, 0.0, "a", "c", out, 0)
    w.env.run()
    assert out[0].t_deliver == pytest.approx(5e-4 + 58_560 / 1e7 + 2e-3 + 1.2304e-3, rel=1e-12)
    assert out[0].hops == 2


def test_a_node_fault_takes_down_all_its_links():
    # b's interfaces down 0 .. 10 ms: a -> c goes a-d-c (same speed, 100 Mbps): 2 ms + W / C + P / C.
    w = ring(faults=[{"node": "b", "down": "0 s", "up": "10 ms"}])
    out = {}
    send_at(w, 0.0, "a", "c", out, 0)
    send_at(w, 0.0, "a", "b", out, 1)  # b unreachable until 10 ms
    w.env.run()
    assert out[0].t_deliver == pytest.approx(2e-3 + W / 1e8 + P / 1e8, rel=1e-12)
    assert link_row(w, "a", "d")["messages"] == 1
    assert out[1].t_start == pytest.approx(0.010, rel=1e-12)


def test_a_cell_outage_stalls_its_stations():
    sc = scenario([node("s1", "switch"), node("ap1", "ap", uplink={"to": "s1", "bandwidth": "1 Gbps"}),
                   node("srv", "server", uplink={"to": "s1", "bandwidth": "1 Gbps"})],
                  cells=[{"name": "cell1", "ap": "ap1", "bandwidth": "50 Mbps", "latency": "2 ms"}],
                  groups=[{"prefix": "w", "count": 2, "cell": "cell1"}],
                  faults=[{"cell": "cell1", "down": "1 ms", "up": "11 ms"}])
    w = World(sc)
    out = {}
    send_at(w, 0.0, "w0", "srv", out, 0)
    w.env.run()
    # 1 ms at 50 Mbps (50,000 bits), then 10 ms down, then 58,560 bits: t_tx = 11 ms + 1.1712 ms
    assert out[0].t_tx == pytest.approx(0.011 + 58_560 / 5e7, rel=1e-12)


# ------------------------------------------------------------------------------------------------------ asymmetry
def test_each_direction_of_an_asymmetric_link_has_its_own_time():
    # up (a -> b): 10 Mbps, 5 ms; down (b -> a): 100 Mbps, 1 ms.
    w = pair(bandwidth_up="10 Mbps", latency_up="5 ms")
    out = {}
    send_at(w, 0.0, "a", "b", out, "up")
    send_at(w, 0.0, "b", "a", out, "down")
    w.env.run()
    assert out["up"].t_deliver == pytest.approx(5e-3 + W / 1e7, rel=REL)  # 0.015856
    assert out["down"].t_deliver == pytest.approx(1e-3 + W / 1e8, rel=REL)  # 0.0020856
    rows = w.recorder.links_frame().select("src", "dst", "capacity_bps", "latency_s").rows()
    assert rows == [("a", "b", 1e7, 5e-3), ("b", "a", 1e8, 1e-3)]


def test_routes_follow_the_latency_of_the_direction_travelled():
    # a-b: 10 ms a -> b, 1 ms b -> a; a-c-b: 2 ms per hop both ways. a -> b goes round (4 ms), b -> a direct.
    sc = scenario([node("a"), node("b"), node("c")],
                  [link("a", "b", latency_up="10 ms", name="ab"), link("a", "c", lat="2 ms"),
                   link("c", "b", lat="2 ms")])
    topo = Topology.from_scenario(sc)
    assert [h.dst for h in topo.route("a", "b")] == ["c", "b"]
    assert [h.dst for h in topo.route("b", "a")] == ["a"]


def test_an_uplink_and_a_group_take_direction_keys():
    sc = scenario([node("s1", "switch"), node("x", uplink={"to": "s1", "bandwidth_up": "20 Mbps",
                                                           "bandwidth_down": "80 Mbps", "latency": "1 ms"})],
                  groups=[{"prefix": "c", "count": 2, "uplink": {"to": "s1", "bandwidth": "100 Mbps",
                                                                 "latency_down": "3 ms", "loss_up": 0.01}}])
    res = {r.id: r for r in Topology.from_scenario(sc).resources}
    assert (res["x-s1:x>s1"].capacity_bps, res["x-s1:s1>x"].capacity_bps) == (20e6, 80e6)
    assert (res["c0-s1:c0>s1"].latency_s, res["c0-s1:s1>c0"].latency_s) == (0.0, 3e-3)
    up, down = (Topology.from_scenario(sc).route(*p)[0] for p in (("c1", "s1"), ("s1", "c1")))
    assert (up.loss, down.loss) == (0.01, 0.0)


def wifi(**cell):
    return scenario([node("s1", "switch"), node("ap1", "ap", uplink={"to": "s1", "bandwidth": "1 Gbps"}),
                     node("srv", "server", uplink={"to": "s1", "bandwidth": "1 Gbps"})],
                    cells=[{"name": "cell1", "ap": "ap1", "latency": "2 ms", **cell}],
                    groups=[{"prefix": "w", "count": 2, "cell": "cell1"}])


def test_a_cell_with_a_capacity_per_direction_has_two_channels():
    # station -> AP 10 Mbps, AP -> station 50 Mbps: two resources. w0 -> w1 crosses each once: 10 Mbps;
    # 2 x 2 ms + W / 1e7 + P (1/1e7 + 1/5e7 - 1/1e7). A shared 60 Mbps cell would carry it twice: 30 Mbps.
    w = World(wifi(bandwidth_up="10 Mbps", bandwidth_down="50 Mbps"))
    res = [(r.id, r.src, r.dst, r.capacity_bps) for r in w.topology.resources if r.medium == "cell"]
    assert res == [("cell:cell1:up", "*", "ap1", 1e7), ("cell:cell1:down", "ap1", "*", 5e7)]
    out = {}
    send_at(w, 0.0, "w0", "w1", out, 0)
    w.env.run()
    assert out[0].t_deliver == pytest.approx(4e-3 + W / 1e7 + P / 5e7, rel=REL)
    # up and down at once do not share (FDD): w0 -> srv at 10 Mbps, srv -> w1 at 50 Mbps
    w = World(wifi(bandwidth_up="10 Mbps", bandwidth_down="50 Mbps"))
    send_at(w, 0.0, "w0", "srv", out, "up")
    send_at(w, 0.0, "srv", "w1", out, "down")
    w.env.run()
    assert out["up"].t_tx == pytest.approx(W / 1e7, rel=REL) and out["down"].t_tx == pytest.approx(W / 5e7, rel=REL)


# ------------------------------------------------------------------------------------------------------ traces
def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_a_capacity_trace_gives_the_piecewise_integral(tmp_path):
    # 1 Mbps from 0, 4 Mbps from 50 ms, 2 Mbps from 100 ms. W = 108,560 bits: 50,000 by 50 ms, then 58,560 at
    # 4 Mbps: t_tx = 0.05 + 0.01464 = 0.06464 s.
    write(tmp_path, "t.csv", "# a comment\ntime_s,bandwidth_bps\n0,1e6\n0.05,4e6\n0.1,2e6\n")
    sc = scenario([node("a"), node("b")], [link("a", "b", bw=None, bandwidth_trace="t.csv", name="ab")],
                  source=str(tmp_path / "s.toml"))
    w = World(sc)
    out = {}
    send_at(w, 0.0, "a", "b", out, 0)
    w.env.run()
    assert out[0].t_tx == pytest.approx(0.06464, rel=REL)
    assert out[0].t_deliver == pytest.approx(0.06564, rel=REL)
    row = link_row(w, "a", "b")
    # capacity_bps: the trace's mean up to the end (0.06564 s): (50,000 + 4e6 x 0.01564) / 0.06564
    assert row["capacity_bps"] == pytest.approx((50_000 + 4e6 * 0.01564) / 0.06564, rel=1e-12)
    assert row["utilisation"] == pytest.approx(W / (50_000 + 4e6 * 0.01564), rel=1e-12)


def test_a_looped_trace_repeats_with_its_period(tmp_path):
    # 1 Mbps for 20 ms, 2 Mbps for 10 ms, period 30 ms: 40,000 bits a period. W = 108,560: 80,000 by 60 ms,
    # 100,000 by 80 ms, the last 8,560 at 2 Mbps: t_tx = 0.08428 s.
    write(tmp_path, "t.csv", "0,1e6\n0.02,2e6\n")
    sc = scenario([node("a"), node("b")], [link("a", "b", bw=None, bandwidth_trace=str(tmp_path / "t.csv"),
                                                bandwidth_trace_period="30 ms", name="ab")])
    w = World(sc)
    out = {}
    send_at(w, 0.0, "a", "b", out, 0)
    w.env.run()
    assert out[0].t_tx == pytest.approx(0.08428, rel=REL)
    # the change points at 20, 30, 50, 60 and 80 ms, crossed while the link is busy, are one wake each; the later
    # ones, while it is idle, cost nothing (start, 5 changes, end, delivery and the message's own events)
    assert w.events_processed < 20


def test_trace_positions_and_integrals_by_hand():
    t = CapacityTrace("x", (0.0, 1.0, 3.0), (10.0, 20.0, 5.0), period=4.0)
    assert [t.at(x) for x in (0.0, 0.99, 1.0, 3.5, 4.0, 5.0, 7.99)] == [10, 10, 20, 5, 10, 20, 5]
    assert t.integral(4.0) == 10 + 40 + 5 and t.integral(9.0) == 2 * 55 + 10
    assert t.mean(8.0) == pytest.approx(55 / 4)
    once = CapacityTrace("x", (0.0, 1.0), (10.0, 20.0))
    assert once.integral(3.0) == 10 + 40 and once.following(0, 1) is None


def test_the_shipped_traces_load_and_document_themselves():
    here = Path(__file__).resolve().parent.parent / "traces"
    for name in ("lte-5mhz-down.csv", "lte-5mhz-up.csv"):
        text = (here / name).read_text()
        assert text.startswith(f"# {name[:-4]}: ") and "synthesise.py" in text
    sc = load_scenario(here.parent / "topologies" / "private-lte.toml")
    c = sc.cells[0]
    assert c.duplex and c.trace is not None and c.down.trace is not None and c.trace.period == 60.0
    assert c.trace.path == str(here / "lte-5mhz-up.csv") and len(c.trace.times) == 120


# ------------------------------------------------------------------------------------------------------ jitter
def test_jitter_is_seeded_and_keeps_each_flow_in_order():
    # One flow of three models on a 1 ms / 100 Mbps link with jitter 3 ms (uniform on [0, 6 ms)): message i ends
    # transmitting at (i + 1) W / C and is delivered 1 ms + 6 ms x u_i later, u_i the i-th draw of the network's
    # generator (random.Random("simfl jitter <seed>")), but never before the previous one.
    def run(seed):
        w = World(scenario([node("a"), node("b")], [link("a", "b", jitter="3 ms")], seed=seed))
        out = {}
        for i in range(3):
            send_at(w, 0.0, "a", "b", out, i)
        w.env.run()
        return [out[i].t_deliver for i in range(3)]

    rng = random.Random("simfl jitter 7")
    want, last = [], 0.0
    for i in range(3):
        last = max((i + 1) * W / 1e8 + 1e-3 + 6e-3 * rng.random(), last)
        want.append(last)
    assert run(7) == pytest.approx(want, rel=1e-12)
    assert run(7) == run(7) and run(7) != run(8)
    assert run(8) == sorted(run(8))


# ------------------------------------------------------------------------------------------------------ handshake
def test_the_first_message_of_a_pair_waits_one_round_trip():
    # a -s1- b, 100 Mbps / 0.5 ms per hop: H = 2 x 2 x (0.5 ms + 624 / 1e8) = 2.02496 ms. #0 starts then; #1,
    # sent meanwhile, queues behind it; #2 sent after both, on the open connection, starts at once.
    sc = scenario([node("s1", "switch"), node("a", uplink={"to": "s1", "bandwidth": "100 Mbps", "latency": "0.5 ms"}),
                   node("b", uplink={"to": "s1", "bandwidth": "100 Mbps", "latency": "0.5 ms"})],
                  network={"handshake": True})
    w = World(sc)
    out = {}
    send_at(w, 0.0, "a", "b", out, 0)
    send_at(w, 0.001, "a", "b", out, 1)
    send_at(w, 0.1, "a", "b", out, 2)
    w.env.run()
    assert out[0].t_start == pytest.approx(2.02496e-3, rel=REL)
    assert out[0].t_deliver == pytest.approx(2.02496e-3 + 1e-3 + W / 1e8 + P / 1e8, rel=REL)
    assert out[1].t_start == pytest.approx(out[0].t_tx, rel=REL)
    assert out[2].t_start == 0.1
    # without headers the SYN and SYN-ACK carry nothing: H is the two latencies
    w = World(sc.replace(network=dataclasses.replace(sc.network, headers=False)))
    send_at(w, 0.0, "a", "b", out, 3)
    w.env.run()
    assert out[3].t_start == pytest.approx(2e-3, rel=REL)


def test_after_a_loss_the_next_message_opens_the_connection_again():
    # handshake 2 x (1 ms + 624 / 1e8) = 2.01248 ms; the link is down 5 ms .. 2 s; give_up 1 s.
    # #0: starts at 2.01248 ms, delivered. #1 sent at 4 ms (connected: starts at once), stalls at 5 ms, lost at
    # 1.005 s. #2, queued, begins then with the connection closed and no route: stalls, waits for 2 s, pays the
    # handshake again: t_start = 2 s + 2.01248 ms.
    w = pair(network={"handshake": True, "give_up": "1 s"}, faults=[{"link": "ab", "down": "5 ms", "up": "2 s"}])
    out = {}
    send_at(w, 0.0, "a", "b", out, 0)
    send_at(w, 0.004, "a", "b", out, 1)
    send_at(w, 0.004, "a", "b", out, 2)
    w.env.run()
    assert out[0].t_start == pytest.approx(2.01248e-3, rel=REL)
    assert out[1][1] == pytest.approx(1.005, rel=REL) and out[1][0].wire_bytes == 1e-3 * 1e8 / 8
    assert out[2].t_start == pytest.approx(2.0 + 2.01248e-3, rel=REL)


# ------------------------------------------------------------------------------------------------------ scenarios
BASE = """
name = "x"
workload = "synthetic"
[[nodes]]
name = "s1"
kind = "switch"
[[node_groups]]
prefix = "c"
count = 2
uplink = { to = "s1", bandwidth = "100 Mbps" }
"""


@pytest.mark.parametrize("extra, message", [
    ('\n[[links]]\na = "c0"\nb = "c1"\nbandwidth = "1 Mbps"\nloss = 0.6\n',
     "links[0].loss = 0.6: must lie in [0, 0.5] (beyond, TCP's loss-limited rate formula means nothing)"),
    ('\n[[links]]\na = "c0"\nb = "c1"\nbandwidth = "1 Mbps"\nbandwidth_up = "2 Mbps"\nbandwidth_trace_down = "t.csv"\n',
     'links[0].bandwidth = "1 Mbps": is not used: bandwidth_up and bandwidth_down (or their traces) give both'),
    ('\n[[links]]\na = "c0"\nb = "c1"\nloss_up = 0.1\n',
     "links[0].bandwidth: missing (required: each direction's capacity; or give bandwidth_up and bandwidth_down"),
    ('\n[[links]]\na = "c0"\nb = "c1"\nbandwidth = "1 Mbps"\nburst_loss = { bad = 0.5, gap = 10 }\n',
     "links[0].burst_loss.burst: missing (required: mean run of the bad state, in packets)"),
    ('\n[[links]]\na = "c0"\nb = "c1"\nbandwidth = "1 Mbps"\nburst_loss = { bad = 1, burst = 12, gap = 10 }\n',
     "links[0].burst_loss = { good = 0.0, bad = 1.0, burst = 12.0, gap = 10.0 }: its stationary loss rate (gap x "
     "good + burst x bad) / (burst + gap) = 0.5455 is above 0.5"),
    ('\n[[links]]\na = "c0"\nb = "c1"\nbandwidth = "1 Mbps"\nloss = 0.1\nburst_loss = { burst = 2, gap = 9 }\n',
     "give loss (or loss_up, loss_down) or burst_loss, not both"),
    ('\n[[links]]\na = "c0"\nb = "c1"\nbandwidth = "1 Mbps"\nbandwidth_trace = "t.csv"\n',
     'links[0].bandwidth_trace = "t.csv": give bandwidth or bandwidth_trace, not both'),
    ('\n[[links]]\na = "c0"\nb = "c1"\nbandwidth_trace = "nope.csv"\n',
     'links[0].bandwidth_trace = "nope.csv": no such trace file'),
    ('\n[[links]]\na = "c0"\nb = "c1"\nbandwidth_trace = "bad.csv"\n',
     'links[0].bandwidth_trace = "bad.csv": {d}/bad.csv: line 3: times must increase (0.5 after 1)'),
    ('\n[[links]]\na = "c0"\nb = "c1"\nbandwidth_trace = "t.csv"\nbandwidth_trace_period = "1 s"\n',
     'links[0].bandwidth_trace_period = "1 s": must exceed the trace\'s last time (2 s in'),
    ('\n[[links]]\na = "c0"\nb = "c1"\nbandwidth = "1 Mbps"\nbandwidth_trace_period = "5 s"\n',
     'links[0].bandwidth_trace_period = "5 s": repeats a capacity trace, but no bandwidth_trace is given'),
    ('\n[[links]]\na = "c0"\nb = "c1"\nbandwidth = "1 Mbps"\njitter = "-1 ms"\n',
     'links[0].jitter = "-1 ms": jitter must not be negative'),
    ('\n[[faults]]\ndown = "1 s"\n', "faults[0]: give exactly one of link, cell and node"),
    ('\n[[faults]]\nlink = "c0-s1"\nnode = "c0"\ndown = "1 s"\n',
     "faults[0]: give exactly one of link, cell and node (got link, node)"),
    ('\n[[faults]]\nlink = "c0-s2"\ndown = "1 s"\n', 'faults[0].link = "c0-s2": unknown link; did you mean'),
    ('\n[[faults]]\ncell = "w"\ndown = "1 s"\n', 'faults[0].cell = "w": unknown cell (the scenario has no cells)'),
    ('\n[[faults]]\nnode = "c0"\ndown = "2 s"\nup = "1 s"\n', 'faults[0].up = "1 s": must be later than down ("2 s")'),
    ('\n[[faults]]\nnode = "c0"\nup = "1 s"\n', "faults[0].down: missing (required: when the outage begins)"),
    ('\n[[faults]]\nnode = "c0"\nevery = "1 s"\nduration = "1 s"\n',
     'faults[0].duration = "1 s": must be shorter than every ("1 s"), else the outages never end'),
    ('\n[[faults]]\nnode = "c0"\nevery = "1 s"\n',
     "faults[0].duration: missing (required for repeating outages: every and duration)"),
    ('\n[[faults]]\nnode = "c0"\ndown = "1 s"\nevery = "3 s"\nduration = "1 s"\n',
     "faults[0]: give down and up (one outage) or every, duration, start and until (repeating outages), not both"),
    ('\n[[faults]]\nnode = "c0"\nevery = "3 s"\nduration = "1 s"\nstart = "5 s"\nuntil = "4 s"\n',
     'faults[0].until = "4 s": must be later than start (5 s)'),
    ('\n[[faults]]\nnode = "c0"\ndown = "-1 s"\n', 'faults[0].down = "-1 s": time must not be negative'),
    ('\n[[faults]]\nnode = "c0"\n', "faults[0]: give down (and up) for one outage, or every and duration"),
    ('\n[network]\ngive_up = "0 s"\n', 'network.give_up = "0 s": time must be positive'),
    ('\n[network]\njitter_distribution = "normal"\n', 'network.jitter_distribution = "normal": must be one of'),
])
def test_bad_new_keys_are_one_line_errors(tmp_path, extra, message):
    write(tmp_path, "t.csv", "time_s,bandwidth_bps\n0,1e6\n2,2e6\n")
    write(tmp_path, "bad.csv", "0,1e6\n1,2e6\n0.5,3e6\n")
    p = write(tmp_path, "x.toml", BASE + extra)
    with pytest.raises(SimflError) as e:
        load_scenario(p)
    text = str(e.value)
    assert "\n" not in text and text.startswith(f"{p}: ")
    assert message.replace("{d}", str(tmp_path)) in text


def test_new_keys_round_trip_through_the_resolved_scenario(tmp_path):
    write(tmp_path, "t.csv", "0,1e6\n2,2e6\n")
    p = write(tmp_path, "x.toml", BASE + """
[[nodes]]
name = "ap1"
kind = "ap"
uplink = { to = "s1", bandwidth_up = "10 Mbps", bandwidth_down = "50 Mbps", latency_up = "3 ms", loss_down = 0.01 }
[[cells]]
name = "w"
ap = "ap1"
bandwidth_trace_up = "t.csv"
bandwidth_down = "20 Mbps"
bandwidth_trace_period = "10 s"
jitter = "1 ms"
burst_loss = { bad = 0.3, burst = 3, gap = 100 }
[[links]]
a = "c0"
b = "c1"
bandwidth_trace = "t.csv"
[[faults]]
cell = "w"
every = "60 s"
duration = "1.5 s"
start = "10 s"
until = "60 min"
[[faults]]
link = "c0-c1"
down = "1 s"
[network]
handshake = false
give_up = "30 s"
jitter_distribution = "exponential"
""")
    sc = load_scenario(p)
    (tmp_path / "run").mkdir()
    back = load_scenario(write(tmp_path / "run", "scenario.toml", sc.to_toml()))
    assert back.cells == sc.cells and back.links == sc.links and back.faults == sc.faults
    assert back.network == sc.network and back.network.give_up == 30.0
    assert sc.faults == (Fault("cell", "w", 10.0, every=60.0, duration=1.5, until=3600.0),
                         Fault("link", "c0-c1", 1.0))


def test_trace_paths_are_relative_to_the_file_that_names_them(tmp_path):
    (tmp_path / "base").mkdir()
    write(tmp_path / "base", "t.csv", "0,1e6\n")
    write(tmp_path / "base", "b.toml", BASE + '\n[[links]]\na = "c0"\nb = "c1"\nbandwidth_trace = "t.csv"\n')
    p = write(tmp_path, "x.toml", 'extends = "base/b.toml"\nname = "x"\n')
    assert load_scenario(p).links[0].trace.path == str(tmp_path / "base" / "t.csv")


def test_fault_schedules_by_hand():
    f = Fault("link", "x", 1.0, every=10.0, duration=2.0, until=25.0)
    assert [f.is_down(t) for t in (0.5, 1.0, 2.9, 3.0, 11.0, 21.5, 31.0)] == [False, True, True, False, True, True,
                                                                               False]
    assert [f.next_edge(t) for t in (0.0, 1.0, 3.0, 11.5, 23.0)] == [1.0, 3.0, 11.0, 13.0, math.inf]
    once = Fault("node", "n", 5.0)
    assert (once.is_down(4.9), once.is_down(1e9), once.next_edge(0.0), once.next_edge(5.0)) == (False, True, 5.0,
                                                                                                 math.inf)


# ------------------------------------------------------------------------------------------------------ runs
def faulty_scenario(tmp_path) -> Path:
    write(tmp_path, "t.csv", "0,50e6\n0.004,20e6\n0.01,80e6\n")
    return write(tmp_path, "x.toml", """
name = "imperfect"
workload = "synthetic"
seed = 4
[[nodes]]
name = "s1"
kind = "switch"
[[nodes]]
name = "s2"
kind = "switch"
uplink = { to = "s1", bandwidth_trace = "t.csv", bandwidth_trace_period = "20 ms", latency = "1 ms" }
[[nodes]]
name = "s3"
kind = "switch"
uplink = { to = "s1", bandwidth = "100 Mbps", latency = "2 ms", jitter = "0.5 ms" }
[[links]]
a = "s2"
b = "s3"
bandwidth = "100 Mbps"
latency = "1 ms"
[[node_groups]]
prefix = "c"
count = 6
uplink = { to = "s2", bandwidth = "100 Mbps", latency = "0.2 ms", loss = 0.02 }
[[node_groups]]
prefix = "d"
count = 6
uplink = { to = "s3", bandwidth_up = "20 Mbps", bandwidth_down = "100 Mbps" }
[[faults]]
link = "s2-s3"
start = "2 ms"
every = "10 ms"
duration = "3 ms"
[[faults]]
node = "d5"
down = "1 ms"
up = "40 ms"
[synthetic]
message_bytes = "20 kB"
pattern = ["allpairs", "gather"]
""")


def test_same_scenario_and_seed_give_byte_identical_traces(tmp_path):
    p = faulty_scenario(tmp_path)
    a = run_scenario(load_scenario(p), tmp_path / "a", progress=False)
    b = run_scenario(load_scenario(p), tmp_path / "b", progress=False)
    for f in ("messages.csv", "links.csv", "messages.parquet"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    # all-pairs of 12 clients, then 11 to the first client; 20 kB is 14 packets: expected retransmissions per
    # message 14 p / (1 - p), 0.286 (p = 0.02, one lossy uplink) or 0.577 (two): some flows are charged a packet
    assert a["totals"]["messages"] == 12 * 11 + 11 and a["totals"]["retransmitted_bytes"] > 0
    assert a["totals"]["events_processed"] == b["totals"]["events_processed"]
    c = run_scenario(load_scenario(p, seed=5), tmp_path / "c", progress=False)  # jitter draws follow the seed
    assert (tmp_path / "a" / "messages.csv").read_bytes() != (tmp_path / "c" / "messages.csv").read_bytes()
    assert c["totals"]["messages"] == a["totals"]["messages"]


def test_events_grow_with_messages_and_change_points_not_bytes(tmp_path):
    p = faulty_scenario(tmp_path)
    quiet = "network.loss_timeouts=false"  # a lost SYN's 1 s would dwarf the small run's time
    small = run_scenario(load_scenario(p, ['synthetic.message_bytes="1 kB"', quiet]), tmp_path / "s", progress=False)
    big = run_scenario(load_scenario(p, ['synthetic.message_bytes="1 MB"', quiet]), tmp_path / "b", progress=False)
    assert big["totals"]["sim_time_s"] > 100 * small["totals"]["sim_time_s"]
    # a longer run crosses more change points (per 20 ms: 3 of the trace, 4 fault edges), never one per byte
    changes = big["totals"]["sim_time_s"] / 0.02 * 7
    assert big["totals"]["events_processed"] < small["totals"]["events_processed"] + changes + 200


def test_a_network_only_run_records_lost_messages(tmp_path):
    p = write(tmp_path, "x.toml", BASE + '\n[[faults]]\nnode = "c1"\ndown = "0 s"\n[network]\ngive_up = "5 s"\n')
    s = run_scenario(load_scenario(p), tmp_path / "run", progress=False)
    assert (s["totals"]["messages"], s["totals"]["messages_lost"]) == (0, 2)
    assert s["patterns"][0]["t_end"] == pytest.approx(5.0, rel=REL)
    msgs = pl.read_parquet(tmp_path / "run" / "messages.parquet")
    assert msgs["status"].to_list() == ["lost", "lost"]


# ------------------------------------------------------------------------------------------------------ fedad
FEDAD = BASE.replace('workload = "synthetic"', 'workload = "fedad"').replace("count = 2", "count = 4") + """
[experiment]
classes = [1, 7]
clients_per_class = 2
baselines = []
[[faults]]
link = "c1-s1"
down = "0 s"
[network]
give_up = "1 s"
"""


def test_a_fedad_run_that_loses_messages_goes_on_without_them(tmp_path, monkeypatch):
    """c1's uplink is down for good and the network gives up after 1 s: every message to or from c1 is lost, each
    a missing message to the protocol (no verdict, no group, no community: c1 is a loner). The learning is the
    fake engine's (every pair associated)."""
    import simfl.learner as learner_mod
    from simfl.learner import FakeEngine

    monkeypatch.setattr(learner_mod, "Engine", lambda **_k: FakeEngine())
    monkeypatch.setenv("SIMFL_CACHE", str(tmp_path / "cache"))
    sc = load_scenario(write(tmp_path, "tiny.toml", FEDAD),
                       ["experiment.rounds=1", "experiment.max_samples_per_client=20", "experiment.phase1_epochs=1"])
    s = run_scenario(sc, tmp_path / "run", progress=False)
    assert s["communities"] == [[0, 2, 3], [1]]
    msgs = pl.read_parquet(tmp_path / "run" / "messages.parquet")
    lost = msgs.filter(pl.col("status") == "lost")
    assert lost.height == s["totals"]["messages_lost"] > 0
    assert ((lost["src"] == "c1") | (lost["dst"] == "c1")).all()
    assert msgs.filter((pl.col("src") != "c1") & (pl.col("dst") != "c1"))["status"].unique().to_list() == ["delivered"]
