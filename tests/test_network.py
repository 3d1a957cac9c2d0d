"""Network timing against hand-computed closed forms, and invariants over random topologies (hypothesis).

Every expected time below is worked out by hand from the documented model (simfl/network.py):
    t_deliver = t_tx + sum(latencies) + P * (sum_h 1/C_h - 1/min_h C_h),
with W = wire bits of the message and P = wire bits of its first packet. For a 12,868-byte payload with the default
headers: 9 packets (8 x 1460 + 1188 payload bytes), W = (12,868 + 9 x 78) x 8 = 108,560 bits, P = 1,538 x 8 =
12,304 bits.

The worlds here turn the TCP handshake off (`network.handshake = false`) to test the transmission model alone;
tests/test_imperfect_links.py checks the handshake (a pair's first message starts one round trip later), and the
random-topology invariants below run with it on and off.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simfl.config import scenario_from_dict
from simfl.errors import SimflError
from simfl.messages import flag_bits, ids_bits, packetize, payload_bits_of
from simfl.network import Network, Stream, contention_efficiency, pipeline_offsets
from simfl.schema import CELL_ACCESS
from simfl.world import World

MODEL = 12868 * 8  # payload bits of one AE-5 model
W = 108_560  # its wire bits
P = 12_304  # wire bits of its first packet
REL = 1e-12


def world(nodes, links=(), cells=(), groups=(), headers=True, handshake=False, access="station") -> World:
    sc = scenario_from_dict({"name": "t", "workload": "synthetic",
                             "network": {"headers": headers, "handshake": handshake, "cell_access": access},
                             "nodes": list(nodes), "links": list(links), "cells": list(cells),
                             "node_groups": list(groups)})
    return World(sc)


def client(name, to=None, bw="100 Mbps", lat="0 s", **kw):
    d = {"name": name, "kind": "client", **kw}
    if to is not None:
        d["uplink"] = {"to": to, "bandwidth": bw, "latency": lat}
    return d


def switch(name, to=None, bw="1 Gbps", lat="0 s", kind="switch"):
    d = {"name": name, "kind": kind}
    if to is not None:
        d["uplink"] = {"to": to, "bandwidth": bw, "latency": lat}
    return d


def send_at(w: World, t: float, src: str, dst: str, bits: int = MODEL, out: dict | None = None, key=None):
    """Send src->dst at simulated time t; the delivered Message lands in out[key]."""

    def proc():
        if t:
            yield w.env.timeout(t)
        msg = yield w.network.send(src, dst, kind="synthetic", phase="test", round=0, payload_bits=bits)
        if out is not None:
            out[key] = msg

    w.env.process(proc())


# --------------------------------------------------------------------------------------------- byte accounting
def test_wire_bytes_by_hand():
    assert packetize(MODEL).wire_bytes * 8 == W
    assert packetize(MODEL).n_packets == 9
    assert packetize(MODEL).first_packet_bytes * 8 == P
    assert packetize(MODEL).wire_bytes == 13_570
    assert packetize(MODEL).last_packet_bytes == 1_188 + 78 and packetize(MODEL).payload_bytes == 12_868
    assert packetize(MODEL, headers=False).wire_bytes == 12_868
    assert packetize(13).wire_bytes == 2 + 78  # 13 bits -> 2 bytes, one packet
    assert packetize(0).wire_bytes == 78 and packetize(0, headers=False).wire_bytes == 0
    assert packetize(1460 * 8).n_packets == 1 and packetize(1461 * 8).n_packets == 2
    assert packetize(1461 * 8, mtu=9000).n_packets == 1


@pytest.mark.parametrize("headers", [True, False])
@pytest.mark.parametrize("bits", [0, 1, 8 * 1460, 8 * 1461, MODEL, 8 * 100_000 + 3])
def test_packets_add_up_to_the_wire_bytes(bits, headers):
    pk = packetize(bits, headers=headers)
    h = 78 if headers else 0
    sizes = [1460 + h] * (pk.n_packets - 1) + [pk.last_packet_bytes]
    assert (pk.mss, pk.header_bytes, pk.payload_bytes) == (1460, h, (bits + 7) // 8)
    assert sum(sizes) == pk.wire_bytes and sizes[0] == pk.first_packet_bytes
    assert sum(s - h for s in sizes) == pk.payload_bytes and 0 <= pk.last_packet_bytes - h <= 1460


def test_payload_bits_of():
    import numpy as np
    import torch

    assert payload_bits_of(np.zeros(10, dtype=np.float32)) == 320
    assert payload_bits_of(torch.zeros(3, 4)) == 3 * 4 * 32
    assert payload_bits_of({"w": torch.zeros(5, dtype=torch.float64), "b": [b"abc", np.zeros(2, np.uint16)]}) \
        == 5 * 64 + 3 * 8 + 2 * 16
    assert payload_bits_of(np.uint16(7)) == 16
    assert ids_bits(90) == 90 * 16 and flag_bits(89) == 89
    with pytest.raises(TypeError):
        payload_bits_of(object())


# --------------------------------------------------------------------------------------------- closed forms
def test_one_message_one_link():
    w = world([client("a"), client("b", to="a", bw="100 Mbps", lat="2 ms")])
    out = {}
    send_at(w, 0.0, "a", "b", out=out, key=0)
    w.env.run()
    m = out[0]
    assert m.t_deliver == pytest.approx(0.002 + 108_560 / 1e8, rel=REL)  # 0.0030856 s
    assert (m.wire_bytes, m.n_packets, m.hops, m.t_send, m.t_start) == (13_570, 9, 1, 0.0, 0.0)


def test_one_message_headerless():
    w = world([client("a"), client("b", to="a", bw="100 Mbps", lat="2 ms")], headers=False)
    out = {}
    send_at(w, 0.5, "a", "b", out=out, key=0)
    w.env.run()
    assert out[0].wire_bytes == 12_868
    assert out[0].t_deliver == pytest.approx(0.5 + 0.002 + 102_944 / 1e8, rel=REL)


def test_multi_hop_pipelined():
    # a -(100 Mbps, 0.5 ms)- s1 -(1 Gbps, 1 ms)- s2 -(100 Mbps, 0.5 ms)- b; bottleneck 100 Mbps.
    # extra = P * (1/1e8 + 1/1e9 + 1/1e8 - 1/1e8) = 12,304 * 1.1e-8 = 1.35344e-4 s
    w = world([switch("s1"), switch("s2", to="s1", bw="1 Gbps", lat="1 ms"),
               client("a", to="s1", lat="0.5 ms"), client("b", to="s2", lat="0.5 ms")])
    out = {}
    send_at(w, 0.0, "a", "b", out=out, key=0)
    w.env.run()
    assert out[0].hops == 3
    assert out[0].t_deliver == pytest.approx(0.002 + 0.0010856 + 1.35344e-4, rel=REL)  # 0.003220944


def test_multi_hop_equal_links_adds_one_packet_per_hop_after_the_first():
    # three 100 Mbps hops, no latency: W/C + 2 P/C = (108,560 + 2 x 12,304) / 1e8
    w = world([switch("s1"), switch("s2", to="s1", bw="100 Mbps"), client("a", to="s1"), client("b", to="s2")])
    out = {}
    send_at(w, 0.0, "a", "b", out=out, key=0)
    w.env.run()
    assert out[0].t_deliver == pytest.approx(133_168 / 1e8, rel=REL)


@pytest.mark.parametrize("k, expected", [
    (1, 1e-3 + 1.0856e-3 + 1.2304e-5),  # 0.002097904
    (2, 1e-3 + 2 * 1.0856e-3 + 1.2304e-5),  # 0.003183504: twice the transmission time of one
    (10, 1e-3 + 10 * 1.0856e-3 + 1.2304e-5),  # 0.011868304
])
def test_concurrent_transfers_share_a_bottleneck(k, expected):
    # k senders, each on its own 1 Gbps / 0.5 ms link to s1, all to b behind a 100 Mbps / 0.5 ms link.
    # Each gets 100 Mbps / k on s1->b; extra = P * (1/1e9 + 1/1e8 - 1/1e8) = 1.2304e-5 s.
    senders = [client(f"a{i}", to="s1", bw="1 Gbps", lat="0.5 ms") for i in range(k)]
    w = world([switch("s1"), client("b", to="s1", bw="100 Mbps", lat="0.5 ms"), *senders])
    out = {}
    for i in range(k):
        send_at(w, 0.0, f"a{i}", "b", out=out, key=i)
    w.env.run()
    for i in range(k):
        assert out[i].t_deliver == pytest.approx(expected, rel=REL)
    links = w.recorder.links_frame()
    row = links.filter((links["src"] == "s1") & (links["dst"] == "b")).row(0, named=True)
    assert row["bytes"] == k * 13_570
    assert row["busy_s"] == pytest.approx(k * 1.0856e-3, rel=REL)


def star_abc() -> World:
    """a, b and c on 100 Mbps links without latency to switch s1."""
    return world([switch("s1"), client("a", to="s1"), client("b", to="s1"), client("c", to="s1")])


def test_late_joiner_slows_the_first_transfer():
    # a -> b alone from 0 to 0.5 ms (50,000 bits at 100 Mbps), then a -> c joins on a's uplink: both at 50 Mbps.
    # a->b: remaining 58,560 bits at 5e7 -> tx ends 0.0005 + 0.0011712 = 0.0016712; a->c has then sent 58,560 and
    # finishes its last 50,000 bits alone at 1e8: 0.0016712 + 0.0005 = 0.0021712. Each + P/C = 1.2304e-4.
    w = star_abc()
    out = {}
    send_at(w, 0.0, "a", "b", out=out, key="b")
    send_at(w, 0.0005, "a", "c", out=out, key="c")
    w.env.run()
    assert out["b"].t_deliver == pytest.approx(0.0016712 + 1.2304e-4, rel=REL)
    assert out["c"].t_deliver == pytest.approx(0.0021712 + 1.2304e-4, rel=REL)
    assert out["c"].t_start == pytest.approx(0.0005, rel=REL)
    assert out["b"].t_tx == pytest.approx(0.0016712, rel=REL)  # the transmission ends
    assert out["c"].t_tx == pytest.approx(0.0021712, rel=REL)


def test_messages_queue_behind_each_other_fifo():
    # Flow a->b gets two messages and flow a->c one, all at t = 0, on a star of 100 Mbps links without latency.
    # a's uplink carries a->b #1 and a->c together (50 Mbps each): both end at 2 W / C = 0.0021712. Then a->b #2
    # (queued behind #1 in its flow) starts at 0.0021712 and runs alone: ends 0.0032568. Each + P/C = 1.2304e-4.
    w = star_abc()
    out = {}
    send_at(w, 0.0, "a", "b", out=out, key="b1")
    send_at(w, 0.0, "a", "c", out=out, key="c")
    send_at(w, 0.0, "a", "b", out=out, key="b2")
    w.env.run()
    assert out["b1"].t_deliver == pytest.approx(0.0021712 + 1.2304e-4, rel=REL)
    assert out["c"].t_deliver == pytest.approx(0.0021712 + 1.2304e-4, rel=REL)
    assert out["b2"].t_start == pytest.approx(0.0021712, rel=REL)
    assert out["b2"].t_send == 0.0
    assert out["b2"].t_deliver == pytest.approx(0.0032568 + 1.2304e-4, rel=REL)
    assert out["b1"].msg_id < out["b2"].msg_id


def test_same_flow_one_link_back_to_back():
    # two messages a->b on one 100 Mbps / 1 ms link: deliveries at L + W/C and L + 2 W/C
    w = world([client("a"), client("b", to="a", lat="1 ms")])
    out = {}
    send_at(w, 0.0, "a", "b", out=out, key=1)
    send_at(w, 0.0, "a", "b", out=out, key=2)
    w.env.run()
    assert out[1].t_deliver == pytest.approx(0.0020856, rel=REL)
    assert out[2].t_deliver == pytest.approx(0.0031712, rel=REL)


def wifi(k: int, access: str = "station", srv_bw: str = "1 Gbps", cell: dict | None = None) -> World:
    # one cell (50 Mbps shared, 2 ms per hop) with k stations; ap1, the server and clients x, y wired to s1 at
    # 1 Gbps / 0.5 ms (the server at srv_bw)
    return world([switch("s1"), switch("ap1", to="s1", bw="1 Gbps", lat="0.5 ms", kind="ap"),
                  {"name": "srv", "kind": "server", "uplink": {"to": "s1", "bandwidth": srv_bw,
                                                               "latency": "0.5 ms"}},
                  client("x", to="s1", bw="1 Gbps", lat="0.5 ms"), client("y", to="s1", bw="1 Gbps", lat="0.5 ms")],
                 cells=[cell or {"name": "cell1", "ap": "ap1", "bandwidth": "50 Mbps", "latency": "2 ms"}],
                 groups=[{"prefix": "w", "count": k, "cell": "cell1"}], access=access)


def transmissions_end(w: World, pairs) -> dict:
    """Send one model per (src, dst) pair at t = 0; run; {(src, dst): t_tx} (when its transmission ended)."""
    out = {}
    for pair in pairs:
        send_at(w, 0.0, *pair, out=out, key=pair)
    w.env.run()
    return {pair: msg.t_tx for pair, msg in out.items()}


def test_contention_efficiency_table():
    # eta(k): 1 up to 5 transmitters, then linear between the measured points (10, 0.83), (15, 0.81), (20, 0.74),
    # flat beyond: eta(8) = 1 - 0.17 x 3/5 = 0.898, eta(12) = 0.83 - 0.02 x 2/5 = 0.822
    assert [contention_efficiency(k) for k in (1, 2, 5, 10, 15, 20, 100)] == [1.0, 1.0, 1.0, 0.83, 0.81, 0.74, 0.74]
    assert contention_efficiency(8) == pytest.approx(0.898, rel=REL)
    assert contention_efficiency(12) == pytest.approx(0.822, rel=REL)


@pytest.mark.parametrize("access", CELL_ACCESS)
def test_wifi_access_point_is_one_transmitter(access):
    # srv sends to w0, w1, w2 (the access point transmits 3 flows) while w3 and w4 upload to srv.
    # station: 3 transmitters (eta = 1), 50/3 Mbps each: the uploads at 50/3 end at 3 W / 5e7 = 0.0065136, having
    # sent W; the relayed flows ran at 50/9 (sent W/3), then alone at 50/3 each: + 2 W / 5e7 -> W / 1e7 = 0.010856.
    # flow: 5 crossings at 10 Mbps each: all end at W / 1e7 = 0.010856.
    down = [("srv", f"w{i}") for i in range(3)]
    up = [("w3", "srv"), ("w4", "srv")]
    t = transmissions_end(wifi(5, access), down + up)
    uploads = 3 * W / 5e7 if access == "station" else W / 1e7
    for pair in down:
        assert t[pair] == pytest.approx(W / 1e7, rel=REL)
    for pair in up:
        assert t[pair] == pytest.approx(uploads, rel=REL)


@pytest.mark.parametrize("access", CELL_ACCESS)
def test_wifi_contenders_share_c_eta_k(access):
    # 10 stations upload at once. station: C eta(10) = 50 x 0.83 = 41.5 Mbps, 4.15 each: W / 4.15e6; flow: W / 5e6.
    t = transmissions_end(wifi(10, access), [(f"w{i}", "srv") for i in range(10)])
    rate = 4.15e6 if access == "station" else 5e6
    assert list(t.values()) == pytest.approx([W / rate] * 10, rel=REL)


@pytest.mark.parametrize("access", CELL_ACCESS)
def test_wifi_share_left_by_a_transmitter_bottlenecked_elsewhere(access):
    # srv (10 Mbps uplink) sends to w0 and w1: 5 Mbps each, bottlenecked there, so the access point uses 10 of the
    # cell; w2 sends to x and y, w3 to x. station: 3 transmitters (eta = 1), the access point's 10 and s for each
    # other: 10 + 2 s = 50, s = 20: w2's flows 10 each, w3's 20; w3 ends at W / 2e7 = 0.005428; then w2 has
    # 40 (20 each) for its remaining W / 2: + W / 4e7 = 0.008142. flow: (50 - 10) / 3 each for w2's and w3's flows:
    # all end at 3 W / 4e7 = 0.008142. The relayed flows end at W / 5e6 = 0.021712 in both.
    pairs = [("srv", "w0"), ("srv", "w1"), ("w2", "x"), ("w2", "y"), ("w3", "x")]
    t = transmissions_end(wifi(4, access, srv_bw="10 Mbps"), pairs)
    assert t[("srv", "w0")] == t[("srv", "w1")] == pytest.approx(W / 5e6, rel=REL)
    assert t[("w2", "x")] == t[("w2", "y")] == pytest.approx(3 * W / 4e7, rel=REL)
    assert t[("w3", "x")] == pytest.approx(W / 2e7 if access == "station" else 3 * W / 4e7, rel=REL)



def test_wifi_control_frame_takes_the_cell_first_and_is_no_transmitter():
    # 10 stations upload (k = 10: 41.5 Mbps, 4.15 each) while srv sends one 100-byte control frame to w0 at t = 0
    # (178 wire bytes, 1,424 bits). Control frames are served ahead of the transmitters: the frame takes the whole
    # cell, C = 50 Mbps (its bottleneck: the wired hops are 1 Gbps), and the access point that sends it is no
    # transmitter (k stays 10, eta 0.83). So the frame ends at 1,424 / 5e7 = 28.48 us, the uploads wait for it and
    # end at 28.48 us + W / 4.15e6. (Were the frame in the access point's share, k = 11, eta(11) = 0.826: the frame
    # would get 50 x 0.826 / 11 = 3.755 Mbps and take 379 us.)
    assert packetize(800).wire_bytes * 8 == 1424
    w = wifi(10)
    out = {}
    for i in range(10):
        send_at(w, 0.0, f"w{i}", "srv", out=out, key=i)

    def frame():
        out["ctl"] = yield w.network.send("srv", "w0", kind="bg", phase="bg", round=0, payload_bits=800,
                                          stream=Stream("ctl", control=True, datagram=True))

    w.env.process(frame())
    w.env.run()
    assert out["ctl"].t_tx == pytest.approx(1424 / 5e7, rel=REL)
    assert [out[i].t_tx for i in range(10)] == pytest.approx([1424 / 5e7 + W / 4.15e6] * 10, rel=REL)

def test_wifi_duplex_cell_stays_shared_per_flow():
    # a duplex cell (a scheduled radio, 30 Mbps up): w0 -> srv, w1 -> srv and w1 -> x are 3 crossings of the up
    # channel at 10 Mbps each (per transmitter, w0 would get 15): all end at W / 1e7, under station access too.
    duplex = {"name": "cell1", "ap": "ap1", "bandwidth_up": "30 Mbps", "bandwidth_down": "30 Mbps"}
    t = transmissions_end(wifi(2, cell=duplex), [("w0", "srv"), ("w1", "srv"), ("w1", "x")])
    assert list(t.values()) == pytest.approx([W / 1e7] * 3, rel=REL)


def test_wifi_cell_shared_by_its_stations():
    # 3 stations send to the server at once: each gets 50/3 Mbps of the cell (the wired links are faster).
    # tx = 3 W / 5e7 = 0.0065136; latency 2 + 0.5 + 0.5 ms; extra = P (1/5e7 + 2/1e9 - 1/5e7) = 2.4608e-5
    w = wifi(3)
    out = {}
    for i in range(3):
        send_at(w, 0.0, f"w{i}", "srv", out=out, key=i)
    w.env.run()
    for i in range(3):
        assert out[i].t_deliver == pytest.approx(0.003 + 0.0065136 + 2.4608e-5, rel=REL)  # 0.009538208
    cell = w.recorder.links_frame().filter(medium="cell").row(0, named=True)
    assert (cell["link"], cell["src"], cell["dst"], cell["bytes"]) == ("cell1", "ap1", "*", 3 * 13_570)


def test_wifi_station_to_station_crosses_the_cell_twice():
    # w0 -> ap1 -> w1: the message occupies the cell twice, so it gets 25 Mbps:
    # 2 x 2 ms + 108,560 / 2.5e7 + P (2/5e7 - 1/5e7) = 0.004 + 0.0043424 + 2.4608e-4 = 0.00858848
    w = wifi(2)
    out = {}
    send_at(w, 0.0, "w0", "w1", out=out, key=0)
    w.env.run()
    assert out[0].t_deliver == pytest.approx(0.00858848, rel=REL)
    assert w.recorder.links_frame().filter(medium="cell")["bytes"].item() == 2 * 13_570


def test_wifi_uplink_and_downlink_share_the_channel():
    # w0 -> srv and srv -> w1 at once: two occupancies of the cell, 25 Mbps each.
    # each: 0.003 + 108,560 / 2.5e7 + 2.4608e-5 = 0.003 + 0.0043424 + 0.000024608 = 0.007367008
    w = wifi(2)
    out = {}
    send_at(w, 0.0, "w0", "srv", out=out, key="up")
    send_at(w, 0.0, "srv", "w1", out=out, key="down")
    w.env.run()
    assert out["up"].t_deliver == pytest.approx(0.007367008, rel=REL)
    assert out["down"].t_deliver == pytest.approx(0.007367008, rel=REL)


def test_max_min_hands_unused_capacity_to_the_others():
    # a (10 Mbps uplink) and b (100 Mbps uplink) both send to c (100 Mbps downlink), no latency. a is bottlenecked
    # by its uplink at 10 Mbps, so b gets the rest of c's downlink: 90 Mbps (an equal split would give it 50).
    # b: W / 9e7 = 0.00120622..., a: W / 1e7 = 0.010856 (b's end changes nothing: a stays at its uplink's 10);
    # each + P (1/C_up + 1/1e8 - 1/C_min) = P / 1e8 = 1.2304e-4.
    w = world([switch("s1"), client("a", to="s1", bw="10 Mbps"), client("b", to="s1"), client("c", to="s1")])
    out = {}
    send_at(w, 0.0, "a", "c", out=out, key="a")
    send_at(w, 0.0, "b", "c", out=out, key="b")
    w.env.run()
    assert out["b"].t_deliver == pytest.approx(108_560 / 9e7 + 1.2304e-4, rel=REL)  # 0.00132926222...
    assert out["a"].t_deliver == pytest.approx(0.010856 + 1.2304e-4, rel=REL)  # 0.01097904


def test_max_min_three_resource_chain():
    # n0 -X- n1 -Y- n2 -Z- n3 with X = 20, Y = 50, Z = 100 Mbps, no latency, no headers (W = payload bits,
    # P = 1460 x 8 = 11,680). Flows: f0 n0->n3 (X, Y, Z, 1e6 bits), f1 n0->n1 (X, 2e5), f2 n1->n2 (Y, 1e6),
    # f3 n2->n3 (Z, 1e6). Progressive filling: X saturates first at 20/2: f0 = f1 = 10; then Y: f2 = 50 - 10 = 40;
    # then Z: f3 = 100 - 10 = 90 (equal split: f0 = f1 = 10, f2 = 25, f3 = 50).
    #   t = 1e6 / 9e7 = 0.0111...: f3 ends; f0 stays at 10 (X).
    #   t = 2e5 / 1e7 = 0.02: f1 ends; f0 has 8e5 bits left, f2 2e5. X: f0 = 20; Y: f2 = 50 - 20 = 30.
    #   t = 0.02 + 2e5 / 3e7 = 0.0266...: f2 ends; f0 stays at 20 (X). f0 ends at 0.02 + 8e5 / 2e7 = 0.06,
    #   delivered P (1/2e7 + 1/5e7 + 1/1e8 - 1/2e7) = 3.504e-4 later; one-hop messages add nothing.
    w = world([client("n0"), client("n1", to="n0", bw="20 Mbps"), client("n2", to="n1", bw="50 Mbps"),
               client("n3", to="n2", bw="100 Mbps")], headers=False)
    out = {}
    for key, src, dst, bits in [(0, "n0", "n3", 10**6), (1, "n0", "n1", 2 * 10**5), (2, "n1", "n2", 10**6),
                                (3, "n2", "n3", 10**6)]:
        send_at(w, 0.0, src, dst, bits=bits, out=out, key=key)
    w.env.run()
    assert out[3].t_deliver == pytest.approx(1 / 90, rel=REL)
    assert out[1].t_deliver == pytest.approx(0.02, rel=REL)
    assert out[2].t_deliver == pytest.approx(0.02 + 2e5 / 3e7, rel=REL)
    assert out[0].t_deliver == pytest.approx(0.06 + 3.504e-4, rel=REL)
    assert out[0].hops == 3


def test_inbox_and_errors():
    w = world([client("a"), client("b", to="a")])
    got = {}

    def receiver():
        msg = yield w.network.inbox("b").get(lambda m: m.kind == "model")
        got["m"] = msg

    w.env.process(receiver())
    w.network.send("a", "b", kind="model", phase="phase1", round=3, payload_bits=80, payload=b"0123456789")
    w.env.run()
    assert got["m"].payload == b"0123456789" and got["m"].round == 3 and got["m"].phase == "phase1"
    with pytest.raises(Exception, match="same node"):
        w.network.send("a", "a", kind="x", phase="x", round=0, payload_bits=8)
    with pytest.raises(Exception, match="unknown node"):
        w.network.send("a", "zz", kind="x", phase="x", round=0, payload_bits=8)


def test_inbox_asked_for_after_delivery_still_gets_the_message():
    w = world([client("a"), client("b", to="a")])
    w.network.send("a", "b", kind="model", phase="p", round=0, payload_bits=8)
    w.env.run()
    got = []

    def late():
        got.append((yield w.network.inbox("b").get()))

    w.env.process(late())
    w.env.run()
    assert len(got) == 1 and got[0].src == "a"


def test_compute_time_from_profile():
    sc = scenario_from_dict({"workload": "synthetic", "profiles": {"slow": "2 GFLOP/s"},
                             "nodes": [client("a", profile="slow"), client("b", to="a")]})
    w = World(sc)
    w.compute("a", 3e9, kind="train", phase="phase1", round=0, wall_s=0.25)
    w.env.run()
    row = w.recorder.compute_frame().row(0, named=True)
    assert row["t_end"] == pytest.approx(1.5) and row["node"] == "a" and row["wall_s"] == 0.25
    w2 = World(sc)
    w2.compute("b", 1e10, kind="train", phase="p", round=0)
    w2.env.run()
    assert w2.env.now == pytest.approx(1.0)  # default client profile "edge" = 10 GFLOP/s


# --------------------------------------------------------------------------------------------- invariants
class CheckedNetwork(Network):
    """Checks after every batch of rate changes that no resource carries more than its capacity, and that the rates
    are max-min fair: every transmitting flow is bottlenecked, i.e. some resource on its route is saturated and no
    flow on that resource runs faster than it. Under station access the resources include each transmitter's slot
    on a cell, and each cell must give its active slots one share s, carry at most C eta(k), and carry exactly that
    unless no slot is at its share (module docstring of simfl.network)."""

    max_load = 0.0
    checked_flows = 0

    def _process(self, event):
        super()._process(event)
        load = {}
        fastest = {}
        for r in self._res_list:
            load[r] = sum(m * f.rate for f, m in r.flows.items())
            fastest[r] = max((f.rate for f in r.flows), default=0.0)
            assert load[r] <= r.capacity * (1 + 1e-9), (r.idx, load[r], r.capacity)
            if r.spec is not None:
                CheckedNetwork.max_load = max(CheckedNetwork.max_load, load[r] / r.capacity)
        for cell, slots in self._cell_slots.items():
            active = [s for s in slots if s.n]
            if active:
                target = cell.capacity * contention_efficiency(len(active))
                assert len({s.capacity for s in active}) == 1
                assert load[cell] <= target * (1 + 1e-6)
                assert load[cell] >= target * (1 - 1e-6) or all(load[s] < s.capacity * (1 - 1e-9) for s in active)
        active = {f for r in self._res.values() for f in r.flows}
        for f in active:
            assert f.rate > 0.0, (f.src, f.dst)
            assert any(load[r] >= r.capacity * (1 - 1e-9) and f.rate >= fastest[r] * (1 - 1e-9) for r, _ in f.res), \
                (f.src, f.dst, f.rate, [(r.idx, load[r], r.capacity, fastest[r]) for r, _ in f.res])
        CheckedNetwork.checked_flows += len(active)


@st.composite
def random_case(draw):
    n_sw = draw(st.integers(1, 3))
    bws = st.sampled_from(["1 Mbps", "10 Mbps", "54 Mbps", "100 Mbps", "1 Gbps"])
    lats = st.sampled_from(["0 s", "100 us", "1 ms", "2 ms"])
    nodes = [switch("s0")]
    for i in range(1, n_sw):
        nodes.append(switch(f"s{i}", to=f"s{draw(st.integers(0, i - 1))}", bw=draw(bws), lat=draw(lats)))
    cells = []
    if draw(st.booleans()):
        nodes.append(switch("ap", to=f"s{draw(st.integers(0, n_sw - 1))}", bw=draw(bws), lat=draw(lats), kind="ap"))
        cells.append({"name": "cell", "ap": "ap", "bandwidth": draw(bws), "latency": draw(lats)})
    n_cl = draw(st.integers(2, 6))
    for i in range(n_cl):
        if cells and draw(st.booleans()):
            nodes.append({"name": f"c{i}", "kind": "client", "cell": "cell"})
        else:
            nodes.append(client(f"c{i}", to=f"s{draw(st.integers(0, n_sw - 1))}", bw=draw(bws), lat=draw(lats)))
    msgs = draw(st.lists(st.tuples(st.integers(0, n_cl - 1), st.integers(0, n_cl - 1),
                                   st.sampled_from([0.0, 0.0, 1e-4, 1e-3, 0.01]),
                                   st.sampled_from([0, 1, 8, 800, 11_680, 11_688, 102_944, 1_000_000])),
                         min_size=1, max_size=25))
    msgs = [(f"c{a}", f"c{b}", t, bits) for a, b, t, bits in msgs if a != b]
    headers = draw(st.booleans())
    handshake = draw(st.booleans())
    access = draw(st.sampled_from(CELL_ACCESS))
    return nodes, cells, msgs, headers, handshake, access


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_case())
def test_invariants_over_random_topologies(case):
    nodes, cells, msgs, headers, handshake, access = case
    sc = scenario_from_dict({"workload": "synthetic", "nodes": nodes, "cells": cells,
                             "network": {"headers": headers, "handshake": handshake, "cell_access": access}})
    w = World(sc)
    w.network = net = CheckedNetwork(w.env, w.topology, sc.network, w.recorder)
    for src, dst, t, bits in msgs:
        send_at(w, t, src, dst, bits=bits)
    w.env.run()
    frame = w.recorder.messages_frame()
    assert frame.height == len(msgs) == net.delivered
    topo = w.topology
    expected_bytes: dict[tuple[str, str], int] = {}
    for m in frame.iter_rows(named=True):
        hops = topo.route(m["src"], m["dst"])
        assert m["hops"] == len(hops)
        pk = packetize(m["payload_bits"], sc.network.mtu, sc.network.ip_header_bytes,
                       sc.network.link_header_bytes, headers)
        assert m["wire_bytes"] == pk.wire_bytes
        # delivery no earlier than send + path latency + wire bits at the bottleneck's full capacity
        floor = sum(h.latency_s for h in hops) + 8 * m["wire_bytes"] / min(h.capacity_bps for h in hops)
        assert m["t_deliver"] >= m["t_send"] + floor * (1 - 1e-9) - 1e-15
        assert m["t_start"] >= m["t_send"]
        # the transmission takes at least W / (bottleneck capacity)
        assert m["t_tx"] - m["t_start"] >= 8 * m["wire_bytes"] / min(h.capacity_bps for h in hops) * (1 - 1e-9)
        assert m["retransmitted_bytes"] == 0
        for h in hops:
            k = (h.link, h.src if h.medium == "p2p" else "cell")
            expected_bytes[k] = expected_bytes.get(k, 0) + m["wire_bytes"]
    # bytes conserved: every message's wire bytes appear on every hop of its route, nowhere else
    links = w.recorder.links_frame()
    for r in links.iter_rows(named=True):
        k = (r["link"], r["src"] if r["medium"] == "p2p" else "cell")
        assert r["bytes"] == expected_bytes.get(k, 0)
        # no link above capacity: the bits it carried fit in its busy time at full capacity
        assert 8 * r["bytes"] <= r["capacity_bps"] * r["busy_s"] * (1 + 1e-9) + 1e-6
    assert links["bytes"].sum() == sum(m["wire_bytes"] * m["hops"] for m in frame.iter_rows(named=True))
    # FIFO per flow: in send order; each message starts when the previous one has been transmitted, and is
    # delivered at t_tx + L + P * S (lat[-1], sf[-1] of its route), or with the previous one if that is later
    for (src, dst), g in frame.group_by(["src", "dst"], maintain_order=True):
        ids, starts, delivers = g["msg_id"].to_list(), g["t_start"].to_list(), g["t_deliver"].to_list()
        assert ids == sorted(ids)
        assert starts == sorted(starts) and delivers == sorted(delivers)
        lat, sf = pipeline_offsets(topo.route(src, dst))
        # the handshake: a header-only packet there and one back, each alone on its path
        h = 8 * sc.network.header_bytes
        hs = sum(x.latency_s + h / x.capacity_bps for x in topo.route(src, dst) + topo.route(dst, src))
        prev_tx = prev_deliver = 0.0
        for i, m in enumerate(g.iter_rows(named=True)):
            p = packetize(m["payload_bits"], sc.network.mtu, sc.network.ip_header_bytes,
                          sc.network.link_header_bytes, headers)
            if i == 0 and handshake:
                assert m["t_start"] == pytest.approx(m["t_send"] + hs, rel=1e-12, abs=1e-15)
            else:
                assert m["t_start"] == max(m["t_send"], prev_tx)
            want = max(m["t_tx"] + lat[-1] + 8 * p.first_packet_bytes * sf[-1], prev_deliver)
            assert m["t_deliver"] == pytest.approx(want, rel=1e-12, abs=1e-15)
            prev_tx, prev_deliver = m["t_tx"], m["t_deliver"]


def test_routes_least_latency_then_fewest_hops_then_smallest_name():
    # a and b joined three ways: via sy (2 x 1 ms), via sx (2 x 1 ms, same latency: sx < sy wins), and via the
    # chain s1-s2-s3 (4 x 0.4 ms = 1.6 ms: lowest latency, so it wins despite more hops).
    def topo(with_chain: bool):
        nodes = [switch("sx"), switch("sy"), client("a", to="sx", lat="1 ms"), client("b", to="sx", lat="1 ms")]
        links = [{"a": "a", "b": "sy", "bandwidth": "1 Gbps", "latency": "1 ms"},
                 {"a": "sy", "b": "b", "bandwidth": "1 Gbps", "latency": "1 ms"}]
        if with_chain:
            nodes += [switch("s1"), switch("s2", to="s1", lat="0.4 ms"), switch("s3", to="s2", lat="0.4 ms")]
            links += [{"a": "a", "b": "s1", "bandwidth": "1 Gbps", "latency": "0.4 ms"},
                      {"a": "s3", "b": "b", "bandwidth": "1 Gbps", "latency": "0.4 ms"}]
        return world(nodes, links).topology

    assert [h.dst for h in topo(False).route("a", "b")] == ["sx", "b"]
    assert [h.dst for h in topo(False).route("b", "a")] == ["sx", "a"]
    assert [h.dst for h in topo(True).route("a", "b")] == ["s1", "s2", "s3", "b"]
    assert topo(True).path_latency("a", "b") == pytest.approx(1.6e-3)


# --------------------------------------------------------------------------------------------- t_tx, pipeline
def test_pipeline_offsets_by_hand():
    # hops 100 Mbps / 0.5 ms, 1 Gbps / 1 ms, 100 Mbps / 0.5 ms: 1/C = 1e-8, 1e-9, 1e-8 s per bit.
    # sf: hop 0: 1e-8 - 1e-8 = 0; hop 1: 1.1e-8 - 1e-8 = 1e-9; hop 2: 2.1e-8 - 1e-8 = 1.1e-8; delivery: 1.1e-8.
    w = world([switch("s1"), switch("s2", to="s1", bw="1 Gbps", lat="1 ms"),
               client("a", to="s1", lat="0.5 ms"), client("b", to="s2", lat="0.5 ms")])
    lat, sf = pipeline_offsets(w.topology.route("a", "b"))
    assert lat == pytest.approx([0.0, 0.5e-3, 1.5e-3, 2e-3], rel=REL)
    assert sf == pytest.approx([0.0, 1e-9, 1.1e-8, 1.1e-8], rel=REL)
    assert pipeline_offsets(()) == ([0.0], [0.0])


def test_t_tx_is_the_end_of_the_transmission():
    # a -(100 Mbps, 0.5 ms)- s1 -(1 Gbps, 1 ms)- s2 -(100 Mbps, 0.5 ms)- b, sent at 0.25 s: the sender's last bit
    # leaves W / C = 0.0010856 after t_start, and arrives L + P S = 0.002 + 1.35344e-4 later (test_multi_hop_pipelined)
    w = world([switch("s1"), switch("s2", to="s1", bw="1 Gbps", lat="1 ms"),
               client("a", to="s1", lat="0.5 ms"), client("b", to="s2", lat="0.5 ms")])
    out = {}
    send_at(w, 0.25, "a", "b", out=out, key="m")
    w.env.run()
    m = out["m"]
    assert (m.t_send, m.t_start, m.retransmitted_bytes) == (0.25, 0.25, 0)
    assert m.t_tx == pytest.approx(0.25 + 0.0010856, rel=REL)
    assert m.t_deliver - m.t_tx == pytest.approx(0.002 + 1.35344e-4, rel=1e-9)
    row = w.recorder.messages_frame().row(0, named=True)
    assert (row["t_tx"], row["retransmitted_bytes"]) == (m.t_tx, 0)


def test_short_message_behind_a_long_one_is_delivered_in_order():
    # a -s1- b, two 100 Mbps hops without latency. #1: the model (W = 108,560, P = 12,304 bits): t_tx = 1.0856e-3,
    # delivered P / C later = 1.20864e-3. #2: 1 byte (79 wire bytes = 632 bits, one packet) starts at 1.0856e-3,
    # t_tx = 1.0856e-3 + 6.32e-6 = 1.09192e-3; alone it would arrive 6.32e-6 later (1.09824e-3), before #1: it
    # waits for #1 and is delivered with it, at 1.20864e-3.
    w = world([switch("s1"), client("a", to="s1"), client("b", to="s1")])
    out = {}
    send_at(w, 0.0, "a", "b", out=out, key=1)
    send_at(w, 0.0, "a", "b", bits=8, out=out, key=2)
    w.env.run()
    assert out[1].t_tx == pytest.approx(1.0856e-3, rel=REL)
    assert out[1].t_deliver == pytest.approx(1.20864e-3, rel=REL)
    assert (out[2].t_start, out[2].t_tx) == (out[1].t_tx, pytest.approx(1.09192e-3, rel=REL))
    assert out[2].t_deliver == out[1].t_deliver


# --------------------------------------------------------------------------------------------- links, inboxes
def test_busy_time_counts_busy_periods_only():
    # two messages a->b on one 100 Mbps link, at 0 and 0.01 s: busy 2 x W / C = 2.1712e-3, not 0.01 + W / C.
    # Asked mid-way through the second (at 0.0105), busy_s counts its open period up to then.
    w = world([client("a"), client("b", to="a")])
    send_at(w, 0.0, "a", "b")
    send_at(w, 0.01, "a", "b")
    seen = {}

    def look():
        yield w.env.timeout(0.0105)
        seen["mid"] = w.network.link_columns()

    w.env.process(look())
    w.env.run()
    cols = w.network.link_columns()
    i = cols["src"].index("a")
    assert cols["busy_s"][i] == pytest.approx(2 * 1.0856e-3, rel=REL)
    assert cols["bytes"][i] == 2 * 13_570 and cols["messages"][i] == 2
    assert cols["utilisation"][i] == pytest.approx(8 * 2 * 13_570 / (1e8 * w.env.now), rel=REL)
    assert seen["mid"]["busy_s"][i] == pytest.approx(1.0856e-3 + 0.0005, rel=1e-9)
    assert seen["mid"]["bytes"][i] == 13_570  # the second is still on the wire
    assert cols["busy_s"][1 - i] == 0.0 and cols["bytes"][1 - i] == 0


def test_unclaimed_messages_are_dropped_when_not_kept():
    w = world([client("a"), client("b", to="a")])
    w.network.keep_unclaimed = False
    w.network.send("a", "b", kind="model", phase="p", round=0, payload_bits=8)
    w.env.run()
    assert w.network.delivered == 1 and w.network.inbox("b").items == []
    w.network.send("a", "b", kind="model", phase="p", round=1, payload_bits=8)  # the inbox exists now
    w.env.run()
    assert [m.round for m in w.network.inbox("b").items] == [1]
    with pytest.raises(SimflError, match="unknown node 'zz'"):
        w.network.inbox("zz")


def test_network_routes_around_a_down_link():
    # a ring a - b - c - d - a of 100 Mbps / 1 ms links; a -> c goes a - b - c, or a - d - c with a-b down:
    # 2 ms + W / C + P / C = 0.002 + 0.0010856 + 0.00012304 = 0.00320864 either way; the bytes land on d's links.
    # The handshake is on (the default): + 2 x (2 ms + 2 x 624 bits / 1e8) = 0.00402496 before it starts.
    sc = scenario_from_dict({"workload": "synthetic", "nodes": [{"name": n, "kind": "client"} for n in "abcd"],
                             "links": [{"name": f"{x}-{y}", "a": x, "b": y, "bandwidth": "100 Mbps",
                                        "latency": "1 ms"} for x, y in ("ab", "bc", "cd", "da")]})
    w = World(sc)
    w.network = Network(w.env, w.topology.without(["a-b"]), sc.network, w.recorder)
    out = {}
    send_at(w, 0.0, "a", "c", out=out, key=0)
    w.env.run()
    assert out[0].t_start == pytest.approx(0.00402496, rel=REL)
    assert out[0].hops == 2 and out[0].t_deliver == pytest.approx(0.00402496 + 0.00320864, rel=REL)
    links = w.recorder.links_frame()
    carried = {(r["link"], r["src"]) for r in links.iter_rows(named=True) if r["bytes"]}
    assert carried == {("d-a", "a"), ("c-d", "d")} and links.height == 8


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5), max_size=40), st.integers(-1, 6))
def test_the_due_batch_pops_as_heappop_does(times, lim):
    # _pop_due against heapq itself: the same entries, in the same order, and the same heap left behind
    import heapq

    from simfl.network import _pop_due

    heap = []
    for i, t in enumerate(times):
        heapq.heappush(heap, (float(t), i))
    ref = list(heap)
    expected = [heapq.heappop(ref) for _ in range(sum(t <= lim for t in times))]
    got = _pop_due(heap, float(lim)) if heap else []
    assert got == expected
    assert sorted(heap) == sorted(ref) and all(heap[(k - 1) // 2] <= heap[k] for k in range(1, len(heap)))


def test_the_reverse_flow_reuses_the_handshake_and_both_match_the_closed_form():
    # a -(100 Mbps, 1 ms)- r -(10 Mbps, 2 ms)- b: each way the SYN (or SYN-ACK) of h = 78 bytes crosses both hops,
    # H = 2 x (1 ms + 624 / 1e8 + 2 ms + 624 / 1e7) = 0.0061373 s; b -> a, sent later, starts H after its send.
    w = world([client("a", to="r", lat="1 ms"), {"name": "r", "kind": "switch"},
               client("b", to="r", bw="10 Mbps", lat="2 ms")], handshake=True)
    out = {}
    send_at(w, 0.0, "a", "b", out=out, key="ab")
    send_at(w, 0.5, "b", "a", out=out, key="ba")
    w.env.run()
    h = 2 * (0.001 + 624 / 1e8 + 0.002 + 624 / 1e7)
    assert out["ab"].t_start == pytest.approx(h, rel=REL)
    assert out["ba"].t_start == pytest.approx(0.5 + h, rel=REL)


def test_the_messages_frame_is_rebuilt_after_new_messages_and_late_marks():
    w = world([client("a"), client("b", to="a")])
    w.network.send("a", "b", kind="model", phase="p", round=0, payload_bits=8)
    w.env.run()
    first = w.recorder.messages_frame()
    assert w.recorder.messages_frame() is first and first.height == 1  # built once while nothing changes
    w.network.send("b", "a", kind="model", phase="p", round=1, payload_bits=8)
    w.env.run()
    assert w.recorder.messages_frame()["msg_id"].to_list() == [0, 1]
    w.recorder.mark_late([1])
    assert w.recorder.messages_frame()["status"].to_list() == ["delivered", "late"]


def test_new_message_is_the_message_the_constructor_builds_and_as_frozen():
    import dataclasses

    from simfl.messages import Message, new_message

    args = (7, "a", "b", "model", "phase1", 2, 102944, 13570, 9, 2, 0.5, 0.6, 0.7, 0.8, {"w": 1}, 1538, "late")
    fast, slow = new_message(*args), Message(*args)
    assert type(fast) is Message
    assert dataclasses.asdict(fast) == dataclasses.asdict(slow) and fast.payload is args[14]
    assert new_message(*args[:14]).status == "delivered"  # the defaults too
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.t_deliver = 1.0
