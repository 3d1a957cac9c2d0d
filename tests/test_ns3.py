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

ns-3 is loaded once for the whole file (one import per test process); without the ns3 package every test is
skipped but the one that simulates its absence.
"""

from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
import simpy

from simfl.config import load_scenario, scenario_from_dict
from simfl.errors import SimflError
from simfl.export import export_pcap
from simfl.messages import MessageLost, packetize
from simfl.ns3 import PCAP_DIR, Ns3Network, Ns3Options, available
from simfl.ns3.network import vht_mode
from simfl.runner import run
from simfl.trace import LINK_SCHEMA, MESSAGE_SCHEMA
from simfl.world import World

MODEL = 12868 * 8  # payload bits of one AE-5 model
W = 13_570  # its wire bytes (9 packets)
NS = 2e-9  # ns-3 counts time in nanoseconds
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def _ns3():
    """Pay ns-3's import and the hub's compilation (10-20 s) once for the whole file."""
    if not available():
        pytest.skip("the ns3 package is not installed (pip install ns3; the dev extra includes it)")
    from simfl.ns3 import cpp

    cpp.load()


@pytest.fixture(autouse=True)
def ns3_loaded(request):
    if not getattr(request.function, "without_ns3", False):
        request.getfixturevalue("_ns3")


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
    w.network = Ns3Network.for_scenario(w.env, w.topology, sc, w.recorder, options=Ns3Options(**options))
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


def wifi_cell() -> tuple[World, list]:
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
    return w, out


def test_wifi_cell_delivers_with_simfl_routes_and_byte_counts_deterministically():
    w, out = wifi_cell()
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
    # the same again in this process: ns-3's random streams (WiFi backoffs) are numbered afresh for each network
    assert wifi_cell()[0].recorder.messages_frame().equals(w.recorder.messages_frame())


def test_tiny_fedad_on_ns3_has_the_fluid_payload_and_communities(tiny_cached, tmp_path):
    """The real protocol on both backends: payload bytes per phase and the leader's communities do not depend on
    the network; the closed forms still equal what was measured; first transmissions are simfl's packets."""
    out = {}
    for model in ("fluid", "ns3"):
        sc = load_scenario(tiny_cached, [f'network.model="{model}"'])
        out[model] = (run(sc, tmp_path / model, progress=False), pl.read_parquet(tmp_path / model / "messages.parquet"))
    (fs, fm), (ns, nm) = out["fluid"], out["ns3"]
    fluid, ns3 = fs.fedad, ns.fedad
    assert ns3.payload_bytes == fluid.payload_bytes and set(ns3.payload_bytes) >= {"phase1", "phase2", "centralised"}
    assert ns3.communities == fluid.communities and ns3.leader_communities_match
    cf = ns3.closed_form_bytes
    assert ns3.payload_bytes["phase1"] == cf["eq1_measured_structure"]
    assert ns3.payload_bytes["phase2"] == cf["eq3"]
    assert ns3.payload_bytes["centralised"] == cf["centralised"]
    assert ns.totals.messages == fs.totals.messages and ns.totals.messages_undelivered == 0
    links = pl.read_parquet(tmp_path / "ns3" / "links.parquet")  # the documented schemas, drops per direction
    assert nm.schema == MESSAGE_SCHEMA and links.schema == LINK_SCHEMA
    assert links.height == 2 * 5 and (links["bytes"] > 0).all()  # 5 links: every direction carried something
    key = ["phase", "round", "kind", "src", "dst", "payload_bits", "sent", "n_packets"]  # ids follow send order
    nm = nm.with_columns(sent=pl.col("wire_bytes") - pl.col("retransmitted_bytes")).select(key).sort(key)
    fm = fm.with_columns(sent=pl.col("wire_bytes")).select(key).sort(key)
    assert nm.equals(fm)


def test_a_tiny_fedad_run_on_ns3_goes_on_past_its_lost_messages(tiny_cached, tmp_path):
    """c1's uplink is down for good: on ns-3 every connection to or from c1 gives up (its SYN unanswered 7 times,
    127 s after it opened) and its messages are lost; with deadlines the protocol goes on without them. Both
    backends lose the same messages (the fluid model later, after network.give_up) and find the same communities,
    with c1 alone; every other message is delivered, and the run ends with nothing in flight."""
    tiny_cached.write_text(tiny_cached.read_text() + '\n[[faults]]\nlink = "c1-s1"\ndown = "0 s"\n')
    out = {}
    for model in ("fluid", "ns3"):
        sc = load_scenario(tiny_cached, [f'network.model="{model}"', 'experiment.round_deadline="60 s"',
                                         'experiment.phase1_deadline="60 s"'])
        out[model] = (run(sc, tmp_path / model, progress=False), pl.read_parquet(tmp_path / model / "messages.parquet"))
    (fs, fm), (ns, nm) = out["fluid"], out["ns3"]
    key = ["phase", "round", "kind", "src", "dst"]
    lost = {m: t.filter(pl.col("status") == "lost").select(key).sort(key) for m, t in (("fluid", fm), ("ns3", nm))}
    assert lost["ns3"].height > 0 and lost["ns3"].equals(lost["fluid"])
    assert ((lost["ns3"]["src"] == "c1") | (lost["ns3"]["dst"] == "c1")).all()
    others = nm.filter((pl.col("src") != "c1") & (pl.col("dst") != "c1"))
    assert others["status"].unique().to_list() == ["delivered"]
    assert ns.fedad.communities == fs.fedad.communities and [1] in ns.fedad.communities
    assert ns.totals.messages_lost == lost["ns3"].height and ns.totals.messages_undelivered == 0
    ns_lost = nm.filter(pl.col("status") == "lost")
    assert ns_lost["t_deliver"].is_nan().all() and (ns_lost["wire_bytes"] == 0).all()  # no SYN got through


def test_without_the_ns3_package_fluid_works_and_ns3_is_a_clear_error(tmp_path):
    """A child process where importing ns3 or cppyy fails (as without the package)."""
    code = textwrap.dedent("""
        import importlib.abc, sys

        class NoNs3(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("ns3", "cppyy", "libcppyy"):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, NoNs3())
        from simfl.config import scenario_from_dict
        from simfl.errors import SimflError
        from simfl.ns3 import available
        from simfl.world import World

        d = {"name": "t", "workload": "synthetic",
             "nodes": [{"name": "a", "kind": "client", "uplink": {"to": "b", "bandwidth": "8 Mbps"}},
                       {"name": "b", "kind": "client"}]}
        w = World(scenario_from_dict(d))
        ev = w.network.send("a", "b", kind="x", phase="t", round=0, payload_bits=8 * 922)  # 1,000 wire bytes
        w.env.run()
        print("fluid", ev.value.t_deliver, "available", available())
        try:
            World(scenario_from_dict({**d, "network": {"model": "ns3"}}))
        except SimflError as e:
            print("error", e)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    # 8,000 bits at 8 Mbps, no latency, after the handshake: SYN and SYN-ACK of 78 wire bytes each (1,248 bits)
    assert lines[0] == "fluid 0.001156 available False"
    assert lines[1].startswith("error ") and "pip install ns3" in lines[1]


test_without_the_ns3_package_fluid_works_and_ns3_is_a_clear_error.without_ns3 = True  # runs without ns-3


def _pcap(path: Path) -> tuple[int, list[tuple[int, bytes]]]:
    """(link type, [(orig_len, captured bytes)]) of a classic pcap file."""
    data = path.read_bytes()
    linktype = struct.unpack_from("<I", data, 20)[0]
    out, off = [], 24
    while off < len(data):
        incl, orig = struct.unpack_from("<II", data, off + 8)
        out.append((orig, data[off + 16:off + 16 + incl]))
        off += 16 + incl
    return linktype, out


def _tcp_data(path: Path) -> list[int]:
    """IP lengths of the TCP segments with payload in one of ns-3's point-to-point pcap files (PPP framing)."""
    linktype, recs = _pcap(path)
    assert linktype == 9  # PPP
    out = []
    for _, b in recs:
        assert b[:2] == b"\x00\x21"  # PPP protocol: IPv4
        ip = b[2:]
        total, ihl = struct.unpack_from(">H", ip, 2)[0], (ip[0] & 15) * 4
        if total - ihl - (ip[ihl + 12] >> 4) * 4 > 0:
            out.append(total)
    return out


def test_ns3_pcap_is_an_independent_check_of_the_exporter(tmp_path):
    """ns-3's own pcap per link direction against simfl's per-link export of the same (lossless) run: the same
    data packets on every link direction, with the same sizes (exporter: IP bytes + 38 of framing)."""
    d = {**star(3), "network": {"model": "ns3", "ns3_pcap": True},
         "synthetic": {"message_bytes": 20_000, "pattern": ["gather", "allpairs"]}}
    run(scenario_from_dict(d), tmp_path / "run", progress=False)
    ex = export_pcap(tmp_path / "run", per_link=True)
    ns3_dir = tmp_path / "run" / PCAP_DIR
    files = sorted(p.name for p in ns3_dir.glob("*.pcap"))
    assert files == sorted(p.name for p in ex["files"]) and len(files) == 8  # 4 links, 2 directions
    checked = 0
    for name in files:
        ours = Counter(orig for orig, _ in _pcap(ex["out"] / name)[1])
        theirs = Counter(n + 38 for n in _tcp_data(ns3_dir / name))
        assert ours == theirs, name
        checked += sum(ours.values())
    msgs = pl.read_parquet(tmp_path / "run" / "messages.parquet")
    assert checked == int((msgs["n_packets"] * msgs["hops"]).sum()) and msgs["retransmitted_bytes"].sum() == 0
    hosts = (ns3_dir / "hosts").read_text().split()
    assert hosts[:2] == ["10.0.0.1", "server"]  # the first link's first end


def send_catching(w: World, t: float, src: str, dst: str, bits: int, out: list) -> None:
    """`send_at`, but a lost message's `MessageLost` is caught: out gets (time the event settled, the Message)."""
    def proc():
        if t:
            yield w.env.timeout(t)
        try:
            m = yield w.network.send(src, dst, kind="x", phase="test", round=0, payload_bits=bits)
        except MessageLost as e:
            m = e.message
        out.append((w.env.now, m))

    w.env.process(proc())


def cut_pair(down: str, up: str | None, **options) -> World:
    """a -> b over one 10 Mbps, 1 ms link (no other path) that is down from `down` to `up` (None: for good), on
    ns-3."""
    fault = {"link": "a-b", "down": down, **({"up": up} if up else {})}
    return ns3_world({"name": "t", "workload": "synthetic", "nodes": [
        {"name": "a", "kind": "client", "uplink": {"to": "b", "bandwidth": "10 Mbps", "latency": "1 ms"}},
        {"name": "b", "kind": "client"}], "faults": [fault]}, **options)


def test_a_connection_that_gives_up_loses_its_messages_and_the_next_one_opens_a_new_connection():
    """Link a-b down from 0 to 0.2 s: every SYN is lost; after 6 retransmissions (1 + 2 + ... + 32 ms with a 1 ms SYN
    timeout, then 64 ms more) the connection gives up at 127 ms, and both messages written into it fail there, in
    order, as lost (no byte sent: wire_bytes 0, t_start, t_tx and t_deliver NaN), also in `losses(b)`. A message sent
    at 0.3 s (the link is back) opens a new connection: the closed form of the first test (handshake included)."""
    C, L = 10e6, 1e-3
    w = cut_pair("0 s", "200 ms", syn_timeout=0.001)
    box = w.network.losses("b")
    out: list = []
    send_catching(w, 0.0, "a", "b", MODEL, out)
    send_catching(w, 0.0, "a", "b", 8 * 100, out)
    send_catching(w, 0.3, "a", "b", MODEL, out)
    w.env.run()
    (t0, m0), (t1, m1), (t2, m2) = out
    assert t0 == t1 == pytest.approx(0.127, abs=NS)
    for m in (m0, m1):
        assert (m.status, m.wire_bytes, m.retransmitted_bytes) == ("lost", 0, 0)
        assert math.isnan(m.t_start) and math.isnan(m.t_tx) and math.isnan(m.t_deliver)
    assert (m0.msg_id, m1.msg_id, m0.n_packets, m1.n_packets) == (0, 1, 9, 1)
    assert [m.msg_id for m in box.items] == [0, 1]
    hs = 2 * L + 2 * (48 + 2) * 8 / C
    assert m2.status == "delivered" and m2.t_start == pytest.approx(0.3 + hs, abs=NS)
    assert t2 == m2.t_deliver == pytest.approx(0.3 + hs + (78 + W - 36) * 8 / C + L, abs=NS)
    assert int(w.network._hub.conns.size()) == 2  # the second connection: its own handshake
    tot = w.network.totals()
    assert (tot["messages"], tot["messages_lost"], tot["messages_undelivered"]) == (1, 2, 0)
    assert tot["wire_bytes"] == W and w.network.in_flight == 0
    msgs = w.recorder.messages_frame()
    assert msgs["status"].to_list() == ["lost", "lost", "delivered"]


def test_a_connection_that_gives_up_mid_transfer_loses_what_it_had_not_delivered():
    """Link a-b down for good from 20 ms into a 1 MB transfer, behind which a 100-byte message waits: TCP gives up
    after 15 unanswered retransmissions of its first unacknowledged segment (16 timeouts, each at least 10 ms doubled
    per timeout and at most ns-3's 60 s maximum RTO); the transfer is lost with the bytes it sent (retransmissions
    included), the message behind it with none, at that instant, and the run ends."""
    w = cut_pair("20 ms", None, min_rto=0.01)
    out: list = []
    send_catching(w, 0.0, "a", "b", 8_000_000, out)
    send_catching(w, 0.0, "a", "b", 8 * 100, out)
    w.env.run()
    (t0, big), (t1, small) = out
    assert t0 == t1 and sum(min(0.01 * 2**k, 60) for k in range(16)) <= t0 <= 0.02 + 16 * 60
    assert (big.status, small.status, small.wire_bytes) == ("lost", "lost", 0)
    sent = int(w.network.link_columns()["bytes"][0])  # a -> b: every packet a transmitted, IP bytes + 38
    # its own bytes: the payload it sent, 15 retransmissions among them, and a header per segment
    assert 15 * 1460 < big.retransmitted_bytes < big.wire_bytes <= sent < 1_000_000
    assert big.t_start == pytest.approx(2e-3 + 2 * 50 * 8 / 10e6, abs=NS) and math.isnan(big.t_deliver)
    assert w.network.totals()["messages_lost"] == 2 and w.network.in_flight == 0


def test_a_non_default_give_up_loses_the_message_after_give_up_without_progress():
    """Link a-b (10 Mbps, 1 ms, no other path) down from 20 ms to 1,200 s under a 1 MB transfer, give_up 1,000 s:
    TCP's own 15 retransmissions (which would give up after about 520 s here) no longer fire, and the watchdog
    aborts the connection give_up after the receiver's byte count last advanced, i.e. after the last segment that
    arrived before 20 ms: the loss is in (20 ms + give_up - one 1,538-byte packet time, 20 ms + give_up] (the fluid
    model loses it at 20 ms + give_up exactly). A message sent at 1,201 s opens a new connection and is delivered."""
    give_up = 1000.0
    w = ns3_world({"name": "t", "workload": "synthetic", "network": {"give_up": give_up}, "nodes": [
        {"name": "a", "kind": "client", "uplink": {"to": "b", "bandwidth": "10 Mbps", "latency": "1 ms"}},
        {"name": "b", "kind": "client"}], "faults": [{"link": "a-b", "down": "20 ms", "up": "1200 s"}]})
    out: list = []
    send_catching(w, 0.0, "a", "b", 8_000_000, out)
    send_catching(w, 1201.0, "a", "b", MODEL, out)
    w.env.run()
    (t0, m0), (t1, m1) = out
    assert 0.02 + give_up - 1538 * 8 / 10e6 < t0 <= 0.02 + give_up
    assert m0.status == "lost" and 0 < m0.wire_bytes < 1_000_000 and math.isnan(m0.t_deliver)
    assert m1.status == "delivered" and t1 == m1.t_deliver < 1201.1
    assert int(w.network._hub.conns.size()) == 2


def test_node_crashes_give_the_fluid_models_statuses_and_times():
    """The pair of tests/test_crashes.py (a -100 Mbps, 1 ms- s -10 Gbps- b), on both backends. b is down from 0 to
    10 ms: #0 (a model, sent at 1 ms) reaches it and fails there (to_crashed); #1 (20 ms) is delivered. a crashes at
    41.5 ms, after #2 (40 ms, 1.09 ms on the wire) has left: it still arrives; a is back at 45 ms, and #3 (50 ms)
    opens a new connection (its handshake again) and is lost when a crashes again 0.5 ms into its transmission
    (ns-3: its segments still in a's queue are thrown away), at that instant; #4 from b to the crashed a fails
    there. The times agree within 10 us (ns-3's handshake and framing differ from the fluid model's by a few us)."""
    d = {"name": "t", "workload": "synthetic",
         "nodes": [{"name": "a", "kind": "client"}, {"name": "b", "kind": "client"}, {"name": "s", "kind": "switch"}],
         "links": [{"a": "a", "b": "s", "bandwidth": "100 Mbps", "latency": "1 ms", "name": "as"},
                   {"a": "s", "b": "b", "bandwidth": "10 Gbps", "latency": "0 s", "name": "sb"}]}
    hs = 2 * (1e-3 + 624 / 1e8 + 624 / 1e10)  # the fluid model's handshake
    got = {}
    for model in ("fluid", "ns3"):
        w = World(scenario_from_dict(d)) if model == "fluid" else ns3_world(d)
        net = w.network
        net.allow_crashes()
        out: list = []
        for t, what, node in ((0.0, net.crash, "b"), (10e-3, net.recover, "b"), (41.5e-3, net.crash, "a"),
                              (45e-3, net.recover, "a"), (50e-3 + hs + 0.5e-3, net.crash, "a")):
            w.env.timeout(t).callbacks.append(lambda _ev, what=what, node=node: what(node))
        for t, src, dst in ((1e-3, "a", "b"), (20e-3, "a", "b"), (40e-3, "a", "b"), (50e-3, "a", "b"),
                            (60e-3, "b", "a")):
            send_catching(w, t, src, dst, MODEL, out)
        w.env.run()
        got[model] = sorted(out, key=lambda x: x[1].msg_id)
    for (tf, f), (t3, m) in zip(got["fluid"], got["ns3"], strict=True):
        assert m.status == f.status and t3 == pytest.approx(tf, abs=10e-6)
    assert [m.status for _, m in got["ns3"]] == ["to_crashed", "delivered", "delivered", "lost", "to_crashed"]
    (t3, m3), (_, f3) = got["ns3"][3], got["fluid"][3]
    assert t3 == 50e-3 + hs + 0.5e-3 and m3.t_start == pytest.approx(f3.t_start, abs=10e-6)
    assert math.isnan(m3.t_deliver) and m3.wire_bytes > 0


def test_port_buffers_and_initial_window_come_from_the_scenario():
    """network.buffer for every forwarding port, a link's own `buffer` for its two; network.initial_window: a
    9-segment model that fits a first window of 10 leaves at once; with 4, its 5th segment waits for the first ACK,
    a round trip (2 L) after the first segment left: it arrives at least 2 L - (the 9 segments' time) later."""
    d = star(16, server_bw="100 Mbps")
    d["nodes"][1]["uplink"]["buffer"] = 8  # the server's link: the switch's port towards it holds 8 packets
    d["network"] = {"model": "ns3", "buffer": 1000}
    w = World(scenario_from_dict(d))
    out: list = []
    for i in range(16):
        send_at(w, 0.0, f"c{i:02d}", "server", MODEL, out)
    w.env.run()
    drops = {k: v for k, v in w.network.link_drops().items() if v}
    assert list(drops) == ["server-s1:s1>server"] and w.network.options.buffer_packets == 1000
    t = {}
    for iw in (10, 4):
        w = World(scenario_from_dict({"name": "t", "workload": "synthetic", "network": {
            "model": "ns3", "initial_window": iw}, "nodes": [
            {"name": "a", "kind": "client", "uplink": {"to": "b", "bandwidth": "10 Mbps", "latency": "20 ms"}},
            {"name": "b", "kind": "client"}]}))
        out = []
        send_at(w, 0.0, "a", "b", MODEL, out)
        w.env.run()
        t[iw] = out[0].t_deliver
    assert t[4] - t[10] >= 2 * 0.02 - 8 * W / 10e6


def test_export_spreads_a_message_that_ns3_segmented_otherwise():
    """A 12,872-byte message that ns-3 sent as 10 segments (a retransmission carried some of its bytes along) and a
    0-byte message (no segment): the export writes 10 records of 1,288 / 1,287 payload bytes (12,872 = 2 x 1,288 +
    8 x 1,287) plus 78 header bytes, and none for the empty one; a fluid run's trace must be simfl's packets."""
    from simfl.export import message_packets
    from simfl.topology import Topology

    d = {"name": "t", "workload": "synthetic", "network": {"model": "ns3"},
         "nodes": [{"name": "a", "kind": "client", "uplink": {"to": "b", "bandwidth": "10 Mbps"}},
                   {"name": "b", "kind": "client"}]}
    df = pl.DataFrame({"msg_id": [0, 1], "round": [0, 0], "kind": ["x", "x"], "src": ["a", "a"], "dst": ["b", "b"],
                       "payload_bits": [8 * 12872, 0], "wire_bytes": [12872 + 10 * 78 + 500, 0],
                       "retransmitted_bytes": [500, 0], "n_packets": [10, 0], "hops": [1, 1],
                       "t_start": [0.0, 0.02], "t_tx": [0.01, 0.02], "t_deliver": [0.02, 0.02]})
    sc = scenario_from_dict(d)
    pk, _ = message_packets(df, Topology.from_scenario(sc), sc.network, per_link=False)
    assert Counter(pk.orig_len.tolist()) == {1288 + 78: 2, 1287 + 78: 8} and set(pk.msg_id.tolist()) == {0}
    assert pk.ts_ns[0] == 0 and pk.ts_ns[-1] < 10_000_000  # spread over [t_start, t_tx] by the bytes before
    fluid = scenario_from_dict({**d, "network": {}})
    with pytest.raises(SimflError, match="do not follow the run's scenario.toml"):
        message_packets(df, Topology.from_scenario(fluid), fluid.network, per_link=False)


test_export_spreads_a_message_that_ns3_segmented_otherwise.without_ns3 = True


def test_wifi_replies_do_not_wait_for_arp():
    """Eight wired clients open connections to one station at once: its eight SYN-ACKs leave together. ARP caches
    are filled after the stations associate (an association flushes them), so none waits for an ARP reply (ns-3
    holds 3 packets per unresolved neighbour and drops the rest: a SYN retransmitted 1 s later)."""
    d = {"name": "t", "workload": "synthetic",
         "nodes": [{"name": "sw", "kind": "switch"},
                   {"name": "ap", "kind": "ap", "uplink": {"to": "sw", "bandwidth": "1 Gbps"}},
                   {"name": "r", "kind": "client", "cell": "cell"}],
         "cells": [{"name": "cell", "ap": "ap", "bandwidth": "50 Mbps"}],
         "node_groups": [{"prefix": "c", "count": 8, "kind": "client", "uplink": {"to": "sw", "bandwidth": "1 Gbps"}}]}
    w = ns3_world(d)
    out: list = []
    for i in range(8):
        send_at(w, 0.0, f"c{i}", "r", MODEL, out)
    w.env.run()
    assert len(out) == 8 and max(m.t_start for m in out) < 0.1  # every handshake done well before 1 s


def lossy_pair(uplink: dict, **options) -> World:
    """a -> b over one 10 Mbps, 10 ms link with the uplink keys `uplink` (None: leave the key out), on ns-3."""
    up = {k: v for k, v in {"to": "b", "bandwidth": "10 Mbps", "latency": "10 ms", **uplink}.items() if v is not None}
    return ns3_world({"name": "t", "workload": "synthetic", "nodes": [
        {"name": "a", "kind": "client", "uplink": up}, {"name": "b", "kind": "client"}]}, **options)


def on_both(d: dict, src: str, dst: str, bits: int = 8_000_000) -> tuple[simpy.Event, World, simpy.Event]:
    """One message src -> dst on the fluid network and on ns-3, each run to the end: (the fluid send event, the
    ns-3 world, its send event)."""
    fluid = World(scenario_from_dict(d))
    ev = fluid.network.send(src, dst, kind="x", phase="t", round=0, payload_bits=bits)
    fluid.env.run()
    w = ns3_world(d)
    ev3 = w.network.send(src, dst, kind="x", phase="t", round=0, payload_bits=bits)
    w.env.run()
    return ev, w, ev3


def rx_loss(w: World, link: str, node: str):
    """The loss model of what `node`'s end of `link` receives."""
    net = w.network
    return net._hub.devs[net._dev[(link, node)]].loss


def test_independent_loss_per_direction_on_the_receiving_device():
    """loss_up = 5% on a -> b only: b's device loses each packet it receives with p = 0.05 (within 4 sigma of the
    binomial), a's loses nothing; the links table counts the losses as the direction's drops; TCP resends at least
    every lost data segment's payload (1,460 bytes each, the lost SYN or handshake ACK aside)."""
    w = lossy_pair({"loss_up": 0.05})
    ev = w.network.send("a", "b", kind="x", phase="t", round=0, payload_bits=8 * 2_000_000)
    w.env.run()
    em = rx_loss(w, "a-b", "b")
    n, lost = int(em.seen), int(em.lost)
    assert n >= 2_000_000 // 1460
    assert abs(lost / n - 0.05) <= 4 * (0.05 * 0.95 / n) ** 0.5
    assert w.network.link_drops() == {"a-b:a>b": lost, "a-b:b>a": 0}
    assert not rx_loss(w, "a-b", "a")
    assert ev.value.retransmitted_bytes >= (lost - 2) * 1460


def test_burst_loss_is_a_gilbert_elliott_chain():
    """burst_loss good 0, bad 1, burst 2, gap 18: stationary loss 2 / 20 = 0.1, and runs of consecutive losses are
    the bad state's runs, of mean 2 packets (geometric: sd 1.4); bounds 4 sigma with the runs' correlation."""
    w = lossy_pair({"burst_loss": {"good": 0.0, "bad": 1.0, "burst": 2, "gap": 18}})
    w.network.send("a", "b", kind="x", phase="t", round=0, payload_bits=8 * 4_000_000)
    w.env.run()
    for node in ("a", "b"):  # burst_loss is both directions'
        em = rx_loss(w, "a-b", node)
        n, lost, runs = int(em.seen), int(em.lost), int(em.runs)
        if node == "b":
            assert n >= 4_000_000 // 1460
            assert abs(lost / n - 0.1) <= 4 * (0.1 * 0.9 * 3 / n) ** 0.5  # variance x (2 burst - 1)
            assert abs(lost / runs - 2) <= 4 * 1.4 / runs ** 0.5
        assert lost > 0


def one_cell(**cell) -> dict:
    """A server on a 1 Gbps link to the access point of one 50 Mbps cell with stations c0 and c1 (`cell`: more
    keys of the cell, None: leave the key out)."""
    return {"name": "t", "workload": "synthetic",
            "nodes": [{"name": "ap", "kind": "ap"},
                      {"name": "server", "kind": "server", "uplink": {"to": "ap", "bandwidth": "1 Gbps"}},
                      {"name": "c0", "kind": "client", "cell": "cell1"},
                      {"name": "c1", "kind": "client", "cell": "cell1"}],
            "cells": [{k: v for k, v in {"name": "cell1", "ap": "ap", "bandwidth": "50 Mbps", **cell}.items()
                       if v is not None}]}


def test_loss_and_determinism_in_a_wifi_cell():
    """A cell with loss 5% (both directions): the station's IP layer loses 5% of the packets its access point
    forwards to it (802.11 delivered them: the loss TCP sees, as in the fluid model); TCP resends them; the same
    scenario gives the same losses and times."""
    d = one_cell(loss=0.05)
    seen = []
    for _ in range(2):
        w = ns3_world(d)
        ev = w.network.send("server", "c0", kind="x", phase="t", round=0, payload_bits=8 * 1_000_000)
        w.env.run()
        em = rx_loss(w, "cell1", "c0")
        n, lost = int(em.seen), int(em.lost)
        assert n >= 1_000_000 // 1460 and abs(lost / n - 0.05) <= 4 * (0.05 * 0.95 / n) ** 0.5
        assert ev.value.retransmitted_bytes >= (lost - 2) * 1460 > 0
        seen.append((lost, ev.value.t_deliver))
    assert seen[0] == seen[1]


def duplex_cell(**cell) -> dict:
    """one_cell's network with an FDD cell (10 Mbps, 2 ms station -> access point; 50 Mbps, 1 ms back) and a third
    station c2 (`cell`: more keys of the cell)."""
    d = one_cell(**{"bandwidth": None, "bandwidth_up": "10 Mbps", "bandwidth_down": "50 Mbps", "latency_up": "2 ms",
                    "latency_down": "1 ms", **cell})
    d["nodes"].append({"name": "c2", "kind": "client", "cell": "cell1"})
    return d


def both(d: dict, sends: list[tuple[str, str, int]]) -> tuple[list, World, list]:
    """The messages (src, dst, bytes) sent at t = 0 on the fluid network and on ns-3: (fluid messages, the ns-3
    world, its messages)."""
    out = []
    for w in (World(scenario_from_dict(d)), ns3_world(d)):
        evs = [w.network.send(a, b, kind="x", phase="t", round=0, payload_bits=8 * n) for a, b, n in sends]
        w.env.run()
        out += [w, [e.value for e in evs]]
    return out[1], out[2], out[3]


def test_a_duplex_cell_shares_each_direction_as_the_fluid_model():
    """An FDD cell: one shared channel per direction. c0 uploads 1 MB while the server sends 1 MB to c1: in the fluid
    model they share nothing, and ns-3 adds only the TCP ACKs each flow sends on the other's channel (the links
    table's bytes of that direction beyond the flow's own wire bytes, at its capacity), within 0.5%. Three stations
    uploading 1 MB each share the 10 Mbps up channel equally (fair queueing: the last and the first finish within
    1%), as the fluid model's three equal shares, within 0.5%. The links table has the fluid model's rows."""
    d = duplex_cell()
    f, w, n = both(d, [("c0", "server", 1_000_000), ("server", "c1", 1_000_000)])
    rows = w.network.link_columns()
    fluid_rows = World(scenario_from_dict(d)).network.link_columns()
    assert [rows[k] for k in ("link", "src", "dst")] == [fluid_rows[k] for k in ("link", "src", "dst")]
    got = dict(zip(zip(rows["link"], rows["src"]), rows["bytes"]))
    assert [m.wire_bytes for m in n] == [m.wire_bytes for m in f] == [1_053_430] * 2  # no loss, no drop
    acks_up, acks_down = got[("cell1", "*")] - n[0].wire_bytes, got[("cell1", "ap")] - n[1].wire_bytes
    assert 0 < acks_up < 0.05 * n[1].wire_bytes and 0 < acks_down < 0.05 * n[0].wire_bytes
    assert n[0].t_deliver == pytest.approx(f[0].t_deliver + acks_up * 8 / 10e6, rel=5e-3)
    assert n[1].t_deliver == pytest.approx(f[1].t_deliver + acks_down * 8 / 50e6, rel=5e-3)
    f, w, n = both(d, [(c, "server", 1_000_000) for c in ("c0", "c1", "c2")])
    last = max(m.t_deliver for m in n)
    assert f[0].t_deliver == f[2].t_deliver and last == pytest.approx(f[0].t_deliver, rel=5e-3)
    assert min(m.t_deliver for m in n) > 0.99 * last


def test_a_duplex_cells_capacity_trace_loss_and_station_outage(tmp_path):
    """The up channel follows a trace (10 Mbps, then 2 Mbps from 0.3 s): c0's 1 MB upload alone is within 3% of the
    fluid model's time. The down channel loses 5% of what it delivers (each station's link from it) and c1 is out
    of coverage (a node fault) from 0.05 to 0.15 s while it downloads 1 MB (alone): its link loses packets to the
    loss model (within 4 sigma of 5%) and to the outage, the down channel's drops count them, and the download ends
    after the fluid model's."""
    trace = tmp_path / "t.csv"
    trace.write_text("time_s,bandwidth_bps\n0,10000000\n0.3,2000000\n", encoding="utf-8")
    d = duplex_cell(bandwidth_up=None, bandwidth_trace_up=str(trace), loss_down=0.05)
    d["faults"] = [{"node": "c1", "down": "50 ms", "up": "150 ms"}]
    f, w, n = both(d, [("c0", "server", 1_000_000)])
    assert f[0].t_deliver > 3.0 and n[0].t_deliver == pytest.approx(f[0].t_deliver, rel=0.03)
    f, w, n = both(d, [("server", "c1", 1_000_000)])
    net = w.network
    em = net._hub.devs[net._air_rx[("cell1", "c1")][1]].loss  # c1's device on its link from the down channel
    seen, lost = int(em.seen), int(em.lost)
    assert abs(lost / seen - 0.05) <= 4 * (0.05 * 0.95 / seen) ** 0.5 and int(em.outage) > 0
    assert net.link_drops()["cell:cell1:down"] >= lost + int(em.outage)
    assert n[0].t_deliver > f[0].t_deliver and n[0].retransmitted_bytes > 0


def test_a_wifi_cells_capacity_trace_switches_its_mcs(tmp_path):
    """A cell's trace halves its capacity at 0.1 s: 245.7 -> 122.85 Mbps, i.e. PHY rate / 0.70 = 351 Mbps (80 MHz,
    1 stream, MCS 8) -> 175.5 Mbps (MCS 4, same width and streams: exact modes, no rounding). The server's 6 MB to
    c0 ends where the piecewise time puts it, with the goodputs ns-3 gives each mode in a cell of that constant
    capacity (G1 until 0.1 s, then G2), within 2%; and within 15% of the fluid model's (whose goodput is the
    capacity: the 0.70 calibration is ns-3's share at 80 MHz MCS 7, a little off at other modes)."""
    assert vht_mode(245.7e6) == (80, 1, 8, 234 * 6.0 / 4e-6) and vht_mode(122.85e6) == (80, 1, 4, 234 * 3.0 / 4e-6)
    bits, t1 = 8 * 6_000_000, 0.1
    goodput = []
    for rates in ((245.7e6,), (122.85e6,), (245.7e6, 122.85e6)):
        trace = tmp_path / f"{len(goodput)}.csv"
        trace.write_text("time_s,bandwidth_bps\n" + "".join(f"{k * t1},{r:.0f}\n" for k, r in enumerate(rates)),
                         encoding="utf-8")
        f, w, n = both(one_cell(bandwidth=None, bandwidth_trace=str(trace)), [("server", "c0", bits // 8)])
        goodput.append(bits / (n[0].t_deliver - n[0].t_start))
    g1, g2 = goodput[:2]
    expected = t1 + (bits - g1 * (t1 - n[0].t_start)) / g2
    assert w.network.cell_modes["cell1"]["mcs"] == 8 and n[0].t_deliver == pytest.approx(expected, rel=0.02)
    assert f[0].t_deliver > 0.3 and n[0].t_deliver == pytest.approx(f[0].t_deliver, rel=0.15)


def test_a_wifi_station_down_neither_sends_nor_receives_and_the_others_go_on():
    """c0 is down (a node fault) from 0.1 to 0.3 s while c0 and c1 each upload 1 MB to the server through the 50 Mbps
    cell: what c0 sends in the window is lost at the access point (and what it would receive at its own device), so
    TCP retransmits into the outage with its timeout doubling (min RTO 200 ms) and resumes at the first
    retransmission after the window: later than the fluid model (which resumes at once), by at most the second
    backoff (0.4 s) plus 50 ms of slow start. c1 loses nothing and ends within 12% of the fluid model's time (it has
    the cell alone meanwhile, in both)."""
    d = one_cell()
    d["faults"] = [{"node": "c0", "down": "100 ms", "up": "300 ms"}]
    f, w, n = both(d, [("c0", "server", 1_000_000), ("c1", "server", 1_000_000)])
    assert f[0].t_deliver > 0.3 and f[0].t_deliver < n[0].t_deliver <= f[0].t_deliver + 0.4 + 0.05
    assert n[0].retransmitted_bytes > 0 and int(rx_loss(w, "cell1", "c0").outage) > 0
    assert n[1].retransmitted_bytes == 0 and n[1].t_deliver == pytest.approx(f[1].t_deliver, rel=0.12)
    assert all(m.status == "delivered" for m in n)


def test_asymmetric_bandwidth_and_latency_closed_form():
    """a -> b 10 Mbps, 1 ms; b -> a 2 Mbps, 5 ms: the SYN crosses up, the SYN-ACK down, then the ACK and the
    message go up (the closed form of the module docstring, each direction with its own rate and delay)."""
    cu, lu, cd, ld = 10e6, 1e-3, 2e6, 5e-3
    w = lossy_pair({"bandwidth_up": "10 Mbps", "latency_up": "1 ms", "bandwidth_down": "2 Mbps",
                    "latency_down": "5 ms", "bandwidth": None, "latency": None})
    ev = w.network.send("a", "b", kind="x", phase="t", round=0, payload_bits=MODEL)
    w.env.run()
    t2 = lu + ld + (48 + 2) * 8 / cu + (48 + 2) * 8 / cd
    assert ev.value.t_start == pytest.approx(t2, abs=NS)
    assert ev.value.t_deliver == pytest.approx(t2 + (78 + W - 36) * 8 / cu + lu, abs=NS)


def jittered_pair_delays(seed: int, n: int = 50) -> list[float]:
    """t_deliver - t_send of n - 1 models sent every 0.1 s from a to b (10 Mbps, 1 ms, jitter 1 ms, uniform) on
    the connection the first one opened."""
    w = ns3_world({"name": "t", "workload": "synthetic", "seed": seed, "nodes": [
        {"name": "a", "kind": "client", "uplink": {"to": "b", "bandwidth": "10 Mbps", "latency": "1 ms",
                                                   "jitter": "1 ms"}},
        {"name": "b", "kind": "client"}]})
    out: list = []
    for k in range(n):
        send_at(w, 0.1 * k, "a", "b", MODEL, out)
    w.env.run()
    return [m.t_deliver - m.t_send for m in sorted(out, key=lambda m: m.msg_id)[1:]]


def test_jitter_delays_each_packet_of_a_hop_in_order_and_is_seeded():
    """Each packet crossing a jittered hop arrives max(the packet before it, its arrival without jitter + D), D
    uniform on [0, 2 ms). A model on the open connection (9 segments, back to back) arrives without jitter
    (W - 36) x 8 / C + L + 1 ns after its send; its last packet, with jitter, at that + M, M = max_k (D_k - s_k),
    s_k the serialisation of the segments after segment k: E[M] = integral over x >= 0 of 1 - prod_k F(x + s_k)
    (F: D's distribution function). The mean over 49 models is within 4 standard errors of it; the same seed gives
    the same times, another seed others."""
    C, J = 10e6, 1e-3
    got = jittered_pair_delays(1)
    assert jittered_pair_delays(1) == got and jittered_pair_delays(2) != got
    ips = [1500] * 8 + [1228]  # the IP bytes of the model's 9 segments
    s = [sum((ip + 38) * 8 / C for ip in ips[k + 1:]) for k in range(len(ips))]
    n, h = 4000, 2 * J / 4000
    em = sum((1 - math.prod(min(1.0, ((i + 0.5) * h + sk) / (2 * J)) for sk in s)) * h for i in range(n))
    mean = sum(got) / len(got)
    se = (sum((x - mean) ** 2 for x in got) / (len(got) - 1) / len(got)) ** 0.5
    assert 0 < se < 0.2e-3 and min(got) >= (W - 36) * 8 / C + 1e-3
    assert mean == pytest.approx((W - 36) * 8 / C + 1e-3 + 1e-9 + em, abs=4 * se)


def test_an_outage_stalls_the_transfer_and_tcp_resumes_after_it(tmp_path):
    """link a-b down from 0.1 s to 0.6 s during a 1 MB transfer (0.87 s alone): both ends lose what arrives while it
    is down; the transfer ends after the fluid model's (which resumes at once when the link is back) and within
    TCP's backed-off retransmission timeouts of it (0.2 + 0.4 + 0.8 s at most)."""
    d = {"name": "t", "workload": "synthetic", "nodes": [
        {"name": "a", "kind": "client", "uplink": {"to": "b", "bandwidth": "10 Mbps", "latency": "10 ms"}},
        {"name": "b", "kind": "client"}], "faults": [{"link": "a-b", "down": "100 ms", "up": "600 ms"}]}
    ev, w, ev3 = on_both(d, "a", "b")
    assert int(rx_loss(w, "a-b", "b").outage) > 0 and int(rx_loss(w, "a-b", "a").outage) > 0
    assert ev.value.t_deliver < ev3.value.t_deliver < ev.value.t_deliver + 1.4
    assert int(rx_loss(w, "a-b", "b").lost) == 0  # no loss model beside the outage


def test_an_outage_longer_than_the_planning_window():
    """Link a-b down from 0.1 s to 25 s (outage edges are put into ns-3 10 s ahead): the 1 MB transfer resumes at
    a retransmission after 25 s, before TCP's backed-off timeout could have doubled past 30 s more."""
    w = ns3_world({"name": "t", "workload": "synthetic", "nodes": [
        {"name": "a", "kind": "client", "uplink": {"to": "b", "bandwidth": "10 Mbps", "latency": "10 ms"}},
        {"name": "b", "kind": "client"}], "faults": [{"link": "a-b", "down": "100 ms", "up": "25 s"}]})
    ev = w.network.send("a", "b", kind="x", phase="t", round=0, payload_bits=8_000_000)
    w.env.run()
    assert 25.0 < ev.value.t_deliver < 60.0 and w.network.in_flight == 0


@pytest.mark.parametrize("fault", [{"cell": "cell1", "down": "10 ms", "up": "300 ms"},
                                   {"node": "ap", "down": "10 ms", "up": "300 ms"},
                                   {"link": "server-ap", "every": "100 ms", "duration": "60 ms", "start": "10 ms",
                                    "until": "300 ms"}])
def test_cell_node_and_repeating_outages(fault):
    """A cell, its access point, or (repeatedly: 10-70, 110-170, 210-270 ms) the server's link down while the
    server sends 1 MB to a station (0.17 s alone at the cell's 50 Mbps): the station's device (a cell or its access
    point: every member), or an end of the link, loses packets to the outage, and the transfer ends after the fluid
    model's."""
    d = {**one_cell(), "faults": [fault]}
    ev, w, ev3 = on_both(d, "server", "c0")
    ends = [("server-ap", "ap"), ("server-ap", "server")] if "link" in fault else [("cell1", "c0")]
    assert sum(int(rx_loss(w, *e).outage) for e in ends) > 0
    assert ev3.value.t_deliver > ev.value.t_deliver > 0.3


def test_routes_follow_the_faults_around_an_outage_as_in_the_fluid_model():
    """Triangle: a-b direct (10 Mbps, 1 ms) or a-r-b (10 then 5 Mbps, 2 ms each); a-b is down from 0 to 2 s and
    again from 3.3 s for good. A 1 MB message sent at 0 takes the detour (2 hops; alone on it, within 1% of the
    fluid model's time: the initial window fills the few-ms round trip at once, so TCP's ramp costs little); one
    sent at 3 s takes a-b again (back since 2 s) until 3.3 s, when its routes switch to the detour mid-transfer:
    what was in flight on a-b is lost and TCP resumes on the detour after a retransmission timeout, so it ends after
    the fluid model (which switches at once) and within 0.5 s of it (one 200 ms minimum RTO and a slow start). The
    links table shows the bytes on each path."""
    d = {"name": "t", "workload": "synthetic", "nodes": [
        {"name": "a", "kind": "client", "uplink": {"to": "b", "bandwidth": "10 Mbps", "latency": "1 ms"}},
        {"name": "b", "kind": "server"}, {"name": "r", "kind": "switch"}],
        "links": [{"a": "a", "b": "r", "bandwidth": "10 Mbps", "latency": "2 ms"},
                  {"a": "r", "b": "b", "bandwidth": "5 Mbps", "latency": "2 ms"}],
        "faults": [{"link": "a-b", "down": "0 s", "up": "2 s"}, {"link": "a-b", "down": "3.3 s"}]}
    got = {}
    for model in ("fluid", "ns3"):
        w = World(scenario_from_dict(d)) if model == "fluid" else ns3_world(d)
        out: list = []
        send_at(w, 0.0, "a", "b", 8_000_000, out)
        send_at(w, 3.0, "a", "b", 8_000_000, out)
        w.env.run()
        lc = w.network.link_columns()
        got[model] = out, {(k, s): b for k, s, b in zip(lc["link"], lc["src"], lc["bytes"], strict=True)}
    (f0, f1), _ = got["fluid"]
    (m0, m1), sent = got["ns3"]
    assert m0.hops == f0.hops == 2 and m0.t_deliver == pytest.approx(f0.t_deliver, rel=0.01)
    assert m1.hops == 2 and f1.t_deliver < m1.t_deliver < f1.t_deliver + 0.5
    # the detour carried all of the first message and the end of the second, a-b the start of the second
    assert sent[("a-r", "a")] > m0.wire_bytes + 8_000 and sent[("r-b", "r")] > m0.wire_bytes + 8_000
    assert 0.3 * 10e6 / 8 * 0.9 < sent[("a-b", "a")] < m1.wire_bytes
    assert sent[("a-r", "r")] > 0 and sent[("r-b", "b")] > 0  # the ACKs came back the same way


def test_a_capacity_trace_changes_the_device_rate_at_its_instants(tmp_path):
    """a -> b: 10 Mbps from 0, 2 Mbps from 0.3 s (a trace file): a 1 MB transfer takes about 0.3 s at 10 Mbps
    then the rest at 2 Mbps; ns-3 is within 3% of the fluid model's time."""
    trace = tmp_path / "t.csv"
    trace.write_text("time_s,bandwidth_bps\n0,10000000\n0.3,2000000\n", encoding="utf-8")
    d = {"name": "t", "workload": "synthetic", "nodes": [
        {"name": "a", "kind": "client", "uplink": {"to": "b", "bandwidth_trace_up": str(trace),
                                                   "bandwidth_down": "10 Mbps", "latency": "1 ms"}},
        {"name": "b", "kind": "client"}]}
    ev, w, ev3 = on_both(d, "a", "b")
    assert ev.value.t_deliver > 3.0
    assert ev3.value.t_deliver == pytest.approx(ev.value.t_deliver, rel=0.03)


def test_a_tcp_background_flow_runs_on_its_own_connection_as_in_the_fluid_model(tmp_path):
    """A bulk upload (TCP, best effort) of 500 kB every second beside a gather: background.parquet has its frames
    with and without the workload, their wire bytes are the fluid model's and their latencies within 0.1% of it."""
    d = star(4, server_bw="10 Mbps")
    d["synthetic"] = {"pattern": "gather"}
    d["traffic"] = [{"name": "upload", "src": "c0", "dst": "server", "kind": "bulk", "bytes": 500_000,
                     "every": "1 s", "stop": "3 s"}]
    frames = {}
    for model in ("fluid", "ns3"):
        sc = scenario_from_dict({**d, "network": {"model": model}})
        run(sc, tmp_path / model, progress=False)
        frames[model] = pl.read_parquet(tmp_path / model / "background.parquet")
    f, n = frames["fluid"], frames["ns3"]
    assert n.height == f.height == 6 and n["with_fl"].sum() == 3 and not n["lost"].any()
    assert n["wire_bytes"].to_list() == f["wire_bytes"].to_list() == [526_754] * 6
    assert n["latency"].to_numpy() == pytest.approx(f["latency"].to_numpy(), rel=1e-3)
    # the second upload, alone on its open connection: its wire bytes at the server's 10 Mbps, two 0.5 ms latencies,
    # and its first full packet (1,538 wire bytes) on the 100 Mbps uplink before it
    assert f["latency"][1] == pytest.approx(526_754 * 8 / 10e6 + 2 * 0.5e-3 + 1538 * 8 / 100e6, rel=1e-9)


def test_datagram_frames_over_udp_are_lost_with_their_datagrams():
    """The background alone: 1,000-byte cbr frames from c0 to the server (one datagram: 1,000 + 28 + 38 = 1,066 wire
    bytes), whose link loses 5% of what it delivers, and 5,000-byte frames from c1 to c2 (4 datagrams of up to
    1,472 bytes: 5,264 wire bytes) on lossless links. A frame is lost exactly when one of its datagrams is (the cbr
    flow's lost frames are the loss model's drops); a delivered one arrives after the store-and-forward time of
    its datagram, (1,028 + 2) x 8 / C + L per hop, as no frame queues behind another."""
    from simfl.traffic import run_alone

    d = star(3, server_bw="10 Mbps")
    d["nodes"][1]["uplink"]["loss_down"] = 0.05  # s1 -> server
    d["traffic"] = [{"name": "cam", "src": "c0", "dst": "server", "kind": "cbr", "rate": "1 Mbps", "packet": 1000},
                    {"name": "big", "src": "c1", "dst": "c2", "kind": "periodic", "bytes": 5000, "period": "10 ms"}]
    d["network"] = {"model": "ns3"}
    w = run_alone(scenario_from_dict(d), [400, 50])
    f = w.recorder.background_frame(False)
    cam, big = f.filter(pl.col("flow") == "cam"), f.filter(pl.col("flow") == "big")
    assert (cam.height, big.height) == (400, 50)
    assert int(cam["lost"].sum()) == int(rx_loss(w, "server-s1", "server").lost) > 0
    assert not big["lost"].any() and set(big["wire_bytes"]) == {5264} and set(cam["wire_bytes"]) == {1066}
    t = (1030 * 8 / 100e6 + 0.5e-3) + (1030 * 8 / 10e6 + 0.5e-3)
    assert cam.filter(~pl.col("lost"))["latency"].to_numpy() == pytest.approx(t, abs=4 * NS)


def test_datagram_streams_both_ways_between_two_nodes_are_delivered():
    """a -> b and b -> a, each its own UDP stream: every receiving socket has a port of its own (a frame to a
    sender's port would reach that sending socket, and vanish)."""
    from simfl.traffic import run_alone

    flows = [{"name": n, "src": x, "dst": y, "kind": "periodic", "bytes": 100, "period": "10 ms"}
             for n, x, y in (("ab", "a", "b"), ("ba", "b", "a"))]
    w = run_alone(scenario_from_dict({"name": "t", "workload": "synthetic", "network": {"model": "ns3"},
                                      "nodes": [{"name": "a", "kind": "client",
                                                 "uplink": {"to": "b", "bandwidth": "10 Mbps"}},
                                                {"name": "b", "kind": "client"}], "traffic": flows}), [5, 5])
    f = w.recorder.background_frame(False)
    assert f.height == 10 and not f["lost"].any()


def test_control_frames_pass_a_backlogged_port():
    """A bulk upload fills the switch's 1,000-packet port to the 10 Mbps server link; 100-byte frames every 10 ms
    from c1 wait behind its backlog as best effort (tens of ms), and as control (ToS 0x10, the ports' strict-
    priority queue discs) at most behind the two full packets already past the queue disc (the one being sent and
    the device's 1-packet queue): their unloaded time + 2 x 1,538 x 8 / 10 Mbps."""
    from simfl.traffic import run_alone

    worst = {}
    for prio in ("control", "best_effort"):
        d = star(2, server_bw="10 Mbps")
        d["network"] = {"model": "ns3", "buffer": 1000}
        d["traffic"] = [{"name": "bulk", "src": "c0", "dst": "server", "kind": "bulk", "bytes": 3_000_000},
                        {"name": "plc", "src": "c1", "dst": "server", "kind": "periodic", "bytes": 100,
                         "period": "10 ms", "start": "0.5 s", "priority": prio}]
        w = run_alone(scenario_from_dict(d), [1, 100])
        f = w.recorder.background_frame(False).filter(pl.col("flow") == "plc")
        assert f.height == 100 and not f["lost"].any()
        worst[prio] = f["latency"].max()
    alone = (128 + 2) * 8 / 100e6 + 0.5e-3 + (128 + 2) * 8 / 10e6 + 0.5e-3
    assert alone < worst["control"] <= alone + 2 * 1538 * 8 / 10e6 + 4 * NS
    assert worst["best_effort"] > 20 * (worst["control"] - alone)


def test_control_frames_through_a_wifi_cell_use_edca_priority():
    """The server floods station c0 (a 3 MB TCP upload through the access point), while 100-byte cbr frames go to
    c1 every 10 ms. As control (DSCP EF: 802.11 user priority 5, the video access category, its own MAC queue) a
    frame waits at the access point only for the transmissions under way or won in contention, never behind the
    best-effort queue: at most two PPDUs of 802.11ac's longest duration (5.484 ms; EDCA does not preempt) plus its
    own access and transmission (< 0.5 ms). As best effort it queues behind the flood: its p99 and its median are
    more than twice the control frames'."""
    from simfl.traffic import run_alone

    lat = {}
    for prio in ("control", "best_effort"):
        d = one_cell()
        d["network"] = {"model": "ns3"}
        d["traffic"] = [{"name": "bulk", "src": "server", "dst": "c0", "kind": "bulk", "bytes": 3_000_000},
                        {"name": "plc", "src": "server", "dst": "c1", "kind": "cbr", "rate": "80 kbps",
                         "packet": 100, "start": "0.1 s", "priority": prio}]
        w = run_alone(scenario_from_dict(d), [1, 30])
        f = w.recorder.background_frame(False)
        end = f.filter(pl.col("flow") == "bulk")["t_deliver"][0]
        f = f.filter(pl.col("flow") == "plc")
        assert f.height == 30 and not f["lost"].any() and f["t_deliver"].max() < end  # all during the flood
        lat[prio] = (f["latency"].quantile(0.99), f["latency"].median())
    assert lat["control"][0] <= 2 * 5.484e-3 + 0.5e-3
    assert lat["best_effort"][0] > 2 * lat["control"][0] and lat["best_effort"][1] > 2 * lat["control"][1]


def test_a_datagram_frame_that_never_arrives_is_lost_at_the_end():
    """The receiver's interface is down: IP drops the datagram without a loss model seeing it; once ns-3 has
    nothing left to do the frame is recorded as lost (t_deliver NaN)."""
    import cppyy

    from simfl.traffic import Background

    d = {"name": "t", "workload": "synthetic", "network": {"model": "ns3"},
         "nodes": [{"name": "a", "kind": "client", "uplink": {"to": "b", "bandwidth": "10 Mbps"}},
                   {"name": "b", "kind": "client"}],
         "traffic": [{"name": "ping", "src": "a", "dst": "b", "kind": "periodic", "bytes": 100, "period": "1 s",
                      "stop": "0.5 s"}]}
    w = World(scenario_from_dict(d))
    w.network._hub.nodes[1].GetObject[cppyy.gbl.ns3.Ipv4]().SetDown(1)
    bg = Background(w, [1])
    w.env.run(until=bg.done)
    f = w.recorder.background_frame(True)
    assert f["lost"].to_list() == [True] and f["t_deliver"].is_nan().all() and w.network.in_flight == 0


def test_keys_ns3_cannot_honour_are_one_line_errors():
    """The one left (handshake off) names the key and says the fluid model supports it."""
    d = star(2)
    d["network"] = {"handshake": False, "model": "ns3"}
    with pytest.raises(SimflError, match=r"network.handshake = false: ns-3's TCP always.*the fluid model "
                                         r"\(network.model = \"fluid\"\) supports it"):
        World(scenario_from_dict(d))
