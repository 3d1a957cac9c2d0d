"""The ns-3 backend (simfl.ns3) against hand-computed closed forms, the fluid model and invariants.

Times in the closed forms, for a link of C bit/s and one-way latency L (ns-3 point-to-point device; each packet
occupies the wire for (IP bytes + 38) x 8 / C: a 2-byte PPP header plus a 36-byte inter-frame gap that make up
Ethernet's 38 bytes of framing, and reaches the far end (IP bytes + 2) x 8 / C + L after it started):

    SYN and SYN-ACK: 48 IP bytes (20 IP + 20 TCP + 8 of options: window scale 3, SACK permitted 2, padding 3)
    handshake done at the sender:  t2 = 2 L + 2 x (48 + 2) x 8 / C
    then a pure ACK (40 IP bytes, 78 on the wire) and the message's segments back to back (its W wire bytes, the
    same as simfl's packetization: 12,868 payload bytes in 9 segments = 13,570 wire bytes), the last one arriving

    t_deliver = t2 + (78 + W - 36) x 8 / C + L

A later message on the open connection skips the handshake and the ACK: t_send + (W - 36) x 8 / C + L (+ 1 ns:
ns-3 sends new socket data one time step after the write).
"""

from __future__ import annotations

import pytest

from simfl.config import scenario_from_dict
from simfl.errors import SimflError
from simfl.messages import packetize
from simfl.ns3 import Ns3Network, Ns3Options, available
from simfl.ns3.network import vht_mode
from simfl.world import World

if not available():
    pytest.skip("the ns3 package is not installed (pip install ns3; the dev extra includes it)",
                allow_module_level=True)

MODEL = 12868 * 8  # payload bits of one AE-5 model
W = 13_570  # its wire bytes (9 packets)
NS = 2e-9  # ns-3 counts time in nanoseconds


@pytest.fixture(scope="module", autouse=True)
def ns3_loaded():
    """Pay ns-3's import and the hub's compilation (10-20 s) once for the whole file."""
    from simfl.ns3 import cpp

    cpp.load()


def star(n_clients: int, client_bw="100 Mbps", server_bw="1 Gbps", lat="0.5 ms") -> dict:
    return {"name": "t", "workload": "synthetic",
            "nodes": [{"name": "s1", "kind": "switch"},
                      {"name": "server", "kind": "server", "uplink": {"to": "s1", "bandwidth": server_bw,
                                                                      "latency": lat}}],
            "node_groups": [{"prefix": "c", "count": n_clients, "kind": "client",
                             "uplink": {"to": "s1", "bandwidth": client_bw, "latency": lat}}]}


def ns3_world(d: dict, **options) -> World:
    sc = scenario_from_dict(d)
    w = World(sc)
    w.network = Ns3Network(w.env, w.topology, sc.network, w.recorder, options=Ns3Options(**options))
    return w


def send_at(w: World, t: float, src: str, dst: str, bits: int, out: list) -> None:
    def proc():
        if t:
            yield w.env.timeout(t)
        out.append((yield w.network.send(src, dst, kind="x", phase="test", round=0, payload_bits=bits)))

    w.env.process(proc())


def pair_world(c=10e6, lat="1 ms") -> World:
    return ns3_world({"name": "t", "workload": "synthetic",
                      "nodes": [{"name": "a", "kind": "client", "uplink": {"to": "b", "bandwidth": c,
                                                                          "latency": lat}},
                                {"name": "b", "kind": "client"}]})


def test_one_message_closed_form_then_one_on_the_open_connection():
    C, L = 10e6, 1e-3
    w = pair_world(f"{C:.0f} bps")
    out: list = []
    send_at(w, 0.0, "a", "b", MODEL, out)
    send_at(w, 0.5, "a", "b", MODEL, out)
    w.env.run()
    first, second = sorted(out, key=lambda m: m.msg_id)
    t2 = 2 * L + 2 * (48 + 2) * 8 / C
    assert first.t_start == pytest.approx(t2, abs=NS)
    assert first.t_deliver == pytest.approx(t2 + (78 + W - 36) * 8 / C + L, abs=NS)
    assert second.t_deliver == pytest.approx(0.5 + (W - 36) * 8 / C + L, abs=NS)
    for m in (first, second):
        assert (m.wire_bytes, m.n_packets, m.hops) == (W, 9, 1)
        assert w.network.retransmitted_bytes[m.msg_id] == 0
    assert w.network.totals()["drops"] == 0


def test_fifo_on_a_pair_and_independent_pairs():
    w = ns3_world(star(2, client_bw="10 Mbps", server_bw="10 Mbps"))
    out: list = []
    send_at(w, 0.0, "c0", "server", 8 * 100_000, out)  # long
    send_at(w, 0.0, "c0", "server", 8 * 100, out)  # short, behind the long one on the same connection
    send_at(w, 0.0, "c1", "server", 8 * 100, out)  # short, on its own connection
    w.env.run()
    long_, short_behind, short_alone = sorted(out, key=lambda m: m.msg_id)
    assert short_behind.t_deliver >= long_.t_deliver
    assert short_alone.t_deliver < 0.1 * long_.t_deliver
    assert w.network.in_flight == 0


def test_payload_and_wire_bytes_as_the_fluid_model_without_drops():
    d = star(4)
    sizes = {"c0": MODEL, "c1": 8 * 1, "c2": 8 * 1460, "c3": 8 * 100_001}
    frames = []
    for backend in ("fluid", "ns3"):
        w = World(scenario_from_dict(d)) if backend == "fluid" else ns3_world(d, buffer_packets=1000)
        out: list = []
        for c, bits in sizes.items():
            send_at(w, 0.0, c, "server", bits, out)
        w.env.run()
        frames.append(w.recorder.messages_frame().sort("msg_id"))
    fluid, ns3 = frames
    assert ns3["payload_bits"].to_list() == fluid["payload_bits"].to_list() == list(sizes.values())
    expected = [packetize(b) for b in sizes.values()]
    assert ns3["wire_bytes"].to_list() == fluid["wire_bytes"].to_list() == [p.wire_bytes for p in expected]
    assert ns3["n_packets"].to_list() == [p.n_packets for p in expected]


def incast(n: int) -> tuple[World, list]:
    w = ns3_world(star(n, server_bw="100 Mbps"), buffer_packets=8)
    out: list = []
    for i in range(n):
        send_at(w, 0.0, f"c{i:02d}", "server", MODEL, out)
    w.env.run()
    return w, out


def test_incast_drops_at_the_switch_port_and_retransmits_deterministically():
    n = 16
    w, out = incast(n)
    net = w.network
    assert len(out) == n and net.in_flight == 0
    drops = net.link_drops()
    assert drops["server-s1:s1>server"] == net.totals()["drops"] > 0  # only the server's port overflows
    retx = net.retransmitted_bytes
    assert sum(retx.values()) > 0
    for m in out:  # first transmissions are exactly simfl's packetization; the rest is retransmission
        assert m.wire_bytes - retx[m.msg_id] == W
    cols = net.link_columns()
    i = next(k for k, (s, t) in enumerate(zip(cols["src"], cols["dst"])) if (s, t) == ("s1", "server"))
    assert cols["bytes"][i] >= n * W  # every message's bytes crossed the port once at least
    again = incast(n)[0].recorder.messages_frame()
    assert again.equals(w.recorder.messages_frame())


def test_co_simulation_is_not_perturbed_by_other_simpy_events():
    times = []
    for ticking in (False, True):
        w = pair_world()
        out: list = []
        send_at(w, 0.0, "a", "b", 8 * 200_000, out)
        if ticking:
            def ticker(env=w.env):
                for _ in range(1000):
                    yield env.timeout(1e-4)

            w.env.process(ticker())
        w.env.run()
        times.append(out[0].t_deliver)
    assert times[0] == times[1]


def test_options_and_one_network_per_process():
    with pytest.raises(SimflError, match="host_qdisc"):
        Ns3Options(host_qdisc="red")
    with pytest.raises(SimflError, match="buffer_packets"):
        Ns3Options(buffer_packets=0)
    first = pair_world()
    pair_world()
    with pytest.raises(SimflError, match="closed"):
        first.network.send("a", "b", kind="x", phase="t", round=0, payload_bits=8)


def test_vht_mode_by_hand():
    # target PHY rate = goodput / 0.70; VHT rate = data subcarriers x bits x coding rate x streams / 4 us
    assert vht_mode(165e6) == (80, 1, 5, 234 * 4.0 / 4e-6)  # 235.7 Mbps wanted: 80 MHz 16-QAM 3/4, 234 Mbps
    assert vht_mode(10e6) == (40, 1, 0, 108 * 0.5 / 4e-6)  # 14.3 wanted: 13.5 (40 MHz BPSK 1/2) beats 13.0 (20 MHz)


def test_wifi_cell_delivers_with_simfl_routes_and_byte_counts():
    d = {"name": "t", "workload": "synthetic",
         "nodes": [{"name": "sw", "kind": "switch"},
                   {"name": "server", "kind": "server", "uplink": {"to": "sw", "bandwidth": "1 Gbps"}},
                   {"name": "ap", "kind": "ap", "uplink": {"to": "sw", "bandwidth": "1 Gbps"}}],
         "cells": [{"name": "cell", "ap": "ap", "bandwidth": "50 Mbps", "latency": "1 ms"}],
         "node_groups": [{"prefix": "c", "count": 3, "kind": "client", "cell": "cell"}]}
    w = ns3_world(d)
    out: list = []
    for c in ("c0", "c1", "c2"):
        send_at(w, 0.0, c, "server", MODEL, out)
    send_at(w, 0.0, "c0", "c2", MODEL, out)  # station to station: twice through the cell, via the access point
    w.env.run()
    net = w.network
    assert len(out) == 4 and net.in_flight == 0 and net.totals()["drops"] == 0
    assert sorted(m.hops for m in out) == [2, 3, 3, 3]
    assert all((m.wire_bytes, m.n_packets) == (W, 9) for m in out)
    assert all(net.retransmitted_bytes[m.msg_id] == 0 for m in out)
    cols = net.link_columns()
    cell = cols["bytes"][cols["link"].index("cell")]
    assert cell >= 5 * W  # three messages cross the cell once, one twice (plus ACKs and handshakes)
    phy = net.cell_modes["cell"]["phy_bps"]
    assert min(m.t_deliver for m in out) > 8 * W / phy  # no faster than the PHY rate
