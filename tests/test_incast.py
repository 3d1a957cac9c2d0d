"""The incast check (simfl/incast.py) on hand-worked cases, its scenario keys, and where its warning shows.

Numbers used below (default headers, MSS 1,460, 78 header bytes per packet; slow-start bursts with IW = 10, see
`simfl.incast.slow_start_burst`):
- a 29,200-byte message is 20 packets: a first window of 10, then the 10 left, released by the first 10 ACKs: its
  burst is 10 packets, its first window;
- a 12,868-byte message (one AE-5 model) is 9 packets: its first window is all of it, a burst of 9 packets;
- a 100,000-byte message is 69 packets (68 x 1,460 + 720): windows of 10, 20 and 39, a burst of ceil(39 / 2) = 20;
- the first packet of each is 1,538 bytes = 12,304 bits on the wire. Between two hops of 100 Mbps and 0.5 ms the
  second hop sees a burst 0.5 ms + 12,304 bits / 100 Mbps = 0.00062304 s after it left the sender.
"""

from __future__ import annotations

import json
import tomllib

import pytest

from simfl.config import DEFAULT_SCENARIO, load_scenario, scenario_from_dict
from simfl.errors import SimflError
from simfl.incast import find_incast, port_peaks, slow_start_burst
from simfl.runner import run_scenario
from simfl.summary import read_summary, summary_from_dict
from simfl.workloads import run_synthetic
from simfl.world import World

TWENTY = 29_200  # bytes: 20 packets, burst 10 (the first window)
MODEL = 12_868  # bytes: 9 packets, burst 9
BIG = 100_000  # bytes: 69 packets, burst 20
HOP2 = 0.0005 + 12_304 / 1e8  # when a burst sent at 0 reaches the second hop of a 100 Mbps / 0.5 ms route


def star(n: int, *, pattern: str = "gather", size: int = TWENTY, server_bw: str = "100 Mbps", order: str = "id",
         network: dict | None = None, server_buffer: int | None = None, nodes: tuple = (), links: tuple = (),
         faults: tuple = ()):
    """n clients and a server, each on its own 100 Mbps / 0.5 ms link to switch s (the server's speed as given);
    `nodes`, `links` and `faults` added as given."""
    up = {"to": "s", "bandwidth": server_bw, "latency": "0.5 ms"}
    if server_buffer is not None:
        up["buffer"] = server_buffer
    return scenario_from_dict({
        # times below are worked by hand without the TCP handshake (it delays every pair's first message by one
        # round trip, the same for every client of this star)
        "name": "star", "workload": "synthetic", "network": {"handshake": False, **(network or {})},
        "nodes": [{"name": "s", "kind": "switch"}, {"name": "srv", "kind": "server", "uplink": up}, *nodes],
        "node_groups": [{"prefix": "c", "count": n, "uplink": {"to": "s", "bandwidth": "100 Mbps",
                                                                "latency": "0.5 ms"}}],
        "links": list(links), "faults": list(faults),
        "synthetic": {"pattern": [pattern], "message_bytes": size, "target": "srv", "send_order": order},
    })


def run(sc):
    w = World(sc)
    run_synthetic(w, sc)
    return w, w.recorder.messages_frame()


def peaks(sc):
    w, m = run(sc)
    return {p.port: p for p in port_peaks(m, w.topology, sc)}


def incast(sc):
    w, m = run(sc)
    return find_incast(m, w.topology, sc)


# ------------------------------------------------------------------------------------------------ gather
def test_gather_of_10_fills_the_buffer_exactly_and_11_overflow_it():
    """20-packet messages: 10 flows x IW 10 = 100 packets = the buffer: no warning; 11 x 10 = 110 > 100: the
    server's port."""
    assert incast(star(10)) == []
    p = peaks(star(10))["s>srv (link srv-s)"]
    assert (p.max_flows, p.flows, p.packets, p.ingresses, p.buffer) == (10, 10, 100, 10, 100)
    [w] = incast(star(11))
    assert (w.phase, w.port, w.resource, w.node) == ("synthetic", "s>srv (link srv-s)", "srv-s:s>srv", "s")
    assert (w.flows, w.packets, w.ingresses, w.buffer, w.initial_window, w.ports) == (11, 110, 11, 100, 10, 1)
    assert w.at_s == pytest.approx(HOP2, rel=1e-12)  # all bursts leave at 0 and reach the port together
    assert w.message == ('synthetic: the fluid model is optimistic here (11 concurrent flows into port s>srv '
                         '(link srv-s), buffer 100 packets, initial window 10): rerun with network.model = "ns3" for '
                         'packet-level timing')


def test_slow_start_bursts_by_hand():
    # windows: 1 | 9 | 10 | 10, 10 | 10, 20, 10 | 10, 20, 39 | 10, 20, 40 | 10, 20, 40, 8 | 10, 20, 40, 80, 160, 48
    assert [slow_start_burst(m, 10) for m in (1, 9, 10, 20, 40, 69, 70, 78, 358)] == [1, 9, 10, 10, 10, 20, 20, 20, 80]
    assert [slow_start_burst(m, 4) for m in (3, 20, 28)] == [3, 4, 8]  # 3 | 4, 8, 8 | 4, 8, 16


def test_longer_messages_overflow_in_a_later_round_of_slow_start():
    """100 kB messages (a burst of 20 in their third round): 5 x 20 = 100 <= 100, 6 x 20 = 120 > 100. Packet-level
    (ns-3, 100-packet ports, min RTO 200 ms) the same gathers took 1.05x and 4.9x the fluid time."""
    assert incast(star(5, size=BIG)) == []
    [w] = incast(star(6, size=BIG))
    assert (w.flows, w.packets) == (6, 120)


def test_a_message_shorter_than_the_window_bursts_all_its_packets():
    """9-packet models: 11 x 9 = 99 <= 100, 12 x 9 = 108 > 100."""
    assert incast(star(11, size=MODEL)) == []
    [w] = incast(star(12, size=MODEL))
    assert (w.flows, w.packets) == (12, 108)


@pytest.mark.parametrize(("n", "network", "server_buffer", "warn", "buffer"), [
    (11, {}, 110, False, 110),                       # the port's own buffer: 110 >= 11 x 10
    (12, {}, 110, True, 110),                        # 120 > 110
    (5, {"buffer": 50}, None, False, 50),            # the default buffer: 5 x 10 = 50
    (6, {"buffer": 50}, None, True, 50),             # 60 > 50
    (6, {"buffer": 50}, 1000, False, 1000),          # the link's buffer wins over network.buffer
    (25, {"initial_window": 4}, None, False, 100),   # 25 x 4 = 100
    (26, {"initial_window": 4}, None, True, 100),    # 26 x 4 = 104
])
def test_buffers_and_initial_window_from_the_scenario(n, network, server_buffer, warn, buffer):
    sc = star(n, network=network, server_buffer=server_buffer)
    found = incast(sc)
    assert bool(found) == warn
    assert peaks(sc)["s>srv (link srv-s)"].buffer == buffer
    if warn:
        assert found[0].initial_window == sc.network.initial_window


def test_ingresses_slower_than_the_port_do_not_converge():
    """20 clients of 100 Mbps into a 10 Gbps server port: 200 packets, but 2 Gbps can never fill a 10 Gbps port."""
    sc = star(20, server_bw="10 Gbps")
    assert incast(sc) == []
    assert "s>srv (link srv-s)" not in peaks(sc)  # its ingresses (20 x 100 Mbps) are slower than it


def test_one_faster_ingress_into_a_slower_port_converges():
    """20 clients -> s -> (10 Gbps) -> g -> (100 Mbps WAN) -> srv: the WAN port gets all 20 first windows over one
    ingress ten times its speed; the 10 Gbps port, fed by 20 x 100 Mbps, does not converge."""
    sc = scenario_from_dict({
        "name": "wan", "workload": "synthetic",
        "nodes": [{"name": "s", "kind": "switch"},
                  {"name": "g", "kind": "gateway", "uplink": {"to": "s", "bandwidth": "10 Gbps"}},
                  {"name": "srv", "kind": "server", "uplink": {"to": "g", "bandwidth": "100 Mbps"}}],
        "node_groups": [{"prefix": "c", "count": 20, "uplink": {"to": "s", "bandwidth": "100 Mbps"}}],
        "synthetic": {"pattern": ["gather"], "message_bytes": TWENTY, "target": "srv"},
    })
    [w] = incast(sc)
    assert (w.port, w.flows, w.packets, w.ingresses, w.ports) == ("g>srv (link srv-g)", 20, 200, 1, 1)
    assert "s>g (link g-s)" not in peaks(sc)


def test_messages_rerouted_around_a_fault_are_checked_on_the_route_they_took():
    """The gather of 11 with the server's link to s down from the start: every message goes c -> s -> b -> srv over
    a backup switch b (100 Mbps / 0.5 ms links). The 11 first windows (110 packets) converge on port s>b, reached at
    HOP2 as s>srv was; b>srv has one ingress of its own speed (no convergence); s>srv, down, carried nothing."""
    b = {"a": "s", "b": "b", "bandwidth": "100 Mbps", "latency": "0.5 ms", "name": "s-b"}
    sc = star(11, nodes=({"name": "b", "kind": "switch"},),
              links=(b, {**b, "a": "b", "b": "srv", "name": "b-srv"}), faults=({"link": "srv-s", "down": "0 s"},))
    w, m = run(sc)
    assert m["hops"].to_list() == [3] * 11
    [x] = find_incast(m, w.topology, sc)
    assert (x.port, x.flows, x.packets, x.ingresses, x.buffer) == ("s>b (link s-b)", 11, 110, 11, 100)
    assert x.at_s == pytest.approx(HOP2, rel=1e-12)
    assert set(p.port for p in port_peaks(m, w.topology, sc)) == {"s>b (link s-b)"}


# ------------------------------------------------------------------------------------------------ all-pairs
def test_allpairs_of_5_in_id_order_against_rotated_order():
    """Each message (9 packets) is one burst; each client's 4 bursts leave back to back, each taking the same
    time T, so step k of the exchange is [kT, (k+1)T) for every sender.

    id order: client i's k-th message goes to peer k if k < i, else to k + 1. Receiver r therefore gets, in step
    r - 1, the r clients below it and, in step r, the n - 1 - r clients above it: max(r, n - 1 - r) at once,
    i.e. 4, 3, 2, 3, 4 for c0 .. c4, from as many ingresses. rotated: in step k client i sends to i + k + 1
    (mod 5), a permutation: every receiver gets one burst at a time, over one ingress, so nothing converges.
    (A sender's own port is left out: only the sender feeds it.)"""
    ids = peaks(star(5, pattern="allpairs", size=MODEL))
    assert [ids[f"s>c{r} (link c{r}-s)"].max_flows for r in range(5)] == [4, 3, 2, 3, 4]
    assert [ids[f"s>c{r} (link c{r}-s)"].packets for r in range(5)] == [36, 27, 18, 27, 36]
    assert len(ids) == 5  # a client's own port is fed by the client alone: flows never converge there
    rot = peaks(star(5, pattern="allpairs", size=MODEL, order="rotated"))
    assert {p.max_flows for p in rot.values()} == {1}
    assert {p.flows for p in rot.values()} == {0}
    # buffer 20: 4 and 3 bursts of 9 packets overflow it (c0, c1, c3, c4), 2 x 9 = 18 does not; c0's and c4's
    # ports tie at 36 packets, c0's comes first (step 0)
    net = {"buffer": 20}
    [w] = incast(star(5, pattern="allpairs", size=MODEL, network=net))
    assert (w.port, w.flows, w.packets, w.ingresses, w.ports) == ("s>c0 (link c0-s)", 4, 36, 4, 4)
    assert w.at_s == pytest.approx(HOP2, rel=1e-12)
    assert incast(star(5, pattern="allpairs", size=MODEL, network=net, order="rotated")) == []


def test_the_paper_network_against_the_ns3_measurements():
    """paper-90 (90 clients on 100 Mbps, server on 1 Gbps, 100-packet queues): ns-3 was 57x slower than the fluid
    model for the gather and 10x for id-order all-pairs, and the same as the fluid model with 1,000-packet queues
    (gather) or the rotated order (all-pairs). The check flags exactly the two slow cases: 90 x 9 = 810 packets
    into the server's port, 89 x 9 = 801 into a client's; 810 <= 1,000; rotated never converges."""
    paper = DEFAULT_SCENARIO.parent / "paper-90.toml"

    def check(*sets):
        sc = load_scenario(paper, ["workload=synthetic", "synthetic.message_bytes=12868", *sets])
        return incast(sc)

    [g] = check('synthetic.pattern=["gather"]')
    assert (g.port, g.flows, g.packets, g.buffer) == ("s1>server (link server-s1)", 90, 810, 100)
    [a] = check()
    assert (a.port, a.flows, a.packets, a.ports) == ("s1>c00 (link c00-s1)", 89, 801, 90)
    assert check('synthetic.pattern=["gather"]', "network.buffer=1000") == []
    assert check('synthetic.send_order="rotated"') == []


# ------------------------------------------------------------------------------------------------ chain
def chain(send_every_s: float):
    """Switches s0 - s1 - s2 - s3 (100 Mbps, 0.1 ms), the server on s3, clients x00 .. x10 on s(i % 4); client k
    sends one 29,200-byte message to the server at k x send_every_s."""
    sc = scenario_from_dict({
        "name": "chain", "workload": "synthetic", "network": {"handshake": False},  # times by hand, no handshake
        "nodes": [{"name": f"s{i}", "kind": "switch"} for i in range(4)]
        + [{"name": "srv", "kind": "server", "uplink": {"to": "s3", "bandwidth": "100 Mbps"}}]
        + [{"name": f"x{k:02d}", "kind": "client", "uplink": {"to": f"s{k % 4}", "bandwidth": "100 Mbps"}}
           for k in range(11)],
        "links": [{"a": f"s{i}", "b": f"s{i + 1}", "bandwidth": "100 Mbps", "latency": "0.1 ms"} for i in range(3)],
    })
    w = World(sc)

    def send(k):
        yield w.env.timeout(k * send_every_s)
        yield w.network.send(f"x{k:02d}", "srv", kind="synthetic", phase="test", round=0, payload_bits=8 * TWENTY)

    for k in range(11):
        w.env.process(send(k))
    w.env.run()
    m = w.recorder.messages_frame()
    return sc, w, m


def test_flows_converging_on_one_port_but_one_after_another_do_not_overflow_it():
    """A message alone takes (29,200 + 20 x 78) x 8 / 100 Mbps = 2.5 ms to transmit: sent 20 ms apart, the 11
    flows into the server's port (from 3 ingresses: s2>s3, x03 and x07) never overlap."""
    sc, w, m = chain(0.020)
    assert m["t_start"].to_list() == pytest.approx([0.02 * k for k in range(11)])
    assert find_incast(m, w.topology, sc) == []
    assert {p.max_flows for p in port_peaks(m, w.topology, sc)} == {1}  # s1>s2, s2>s3, s3>srv
    # sent together they converge: 11 x 10 = 110 packets over those 3 ingresses; s2>s3 carries 9 (90 packets)
    sc, w, m = chain(0.0)
    [x] = find_incast(m, w.topology, sc)
    assert (x.phase, x.port, x.flows, x.packets, x.ingresses) == ("test", "s3>srv (link srv-s3)", 11, 110, 3)
    byport = {p.port: p for p in port_peaks(m, w.topology, sc)}
    assert byport["s2>s3 (link s2-s3)"].packets == 90 and not byport["s2>s3 (link s2-s3)"].overflows


# ------------------------------------------------------------------------------------------------ cells
def cell(pattern: str, cell_buffer: int | None = None):
    """12 stations of WiFi cell w (65 Mbps) behind access point ap, ap and the server on switch s (1 Gbps)."""
    c = {"name": "w", "ap": "ap", "bandwidth": "65 Mbps", "latency": "2 ms"}
    if cell_buffer is not None:
        c["buffer"] = cell_buffer
    return scenario_from_dict({
        "name": "cell", "workload": "synthetic",
        "nodes": [{"name": "s", "kind": "switch"},
                  {"name": "ap", "kind": "ap", "uplink": {"to": "s", "bandwidth": "1 Gbps"}},
                  {"name": "srv", "kind": "server", "uplink": {"to": "s", "bandwidth": "1 Gbps"}}],
        "node_groups": [{"prefix": "c", "count": 12, "cell": "w"}],
        "cells": [c],
        "synthetic": {"pattern": [pattern], "message_bytes": TWENTY, "target": "srv"},
    })


def test_a_cell_access_point_is_a_port_of_its_own():
    """Broadcast: 12 first windows reach the AP over its 1 Gbps link for a 65 Mbps channel: 120 > 100 packets.
    Gather: each station queues its own; the AP's uplink gets them over the channel, slower than the link."""
    [w] = incast(cell("broadcast"))
    assert (w.port, w.resource, w.node, w.flows, w.packets, w.ingresses) == ("ap on cell w", "cell:w", "ap", 12,
                                                                             120, 1)
    assert incast(cell("broadcast", cell_buffer=120)) == []
    assert incast(cell("gather")) == []


# ------------------------------------------------------------------------------------------------ the run
def test_the_run_warns_on_stderr_and_records_the_check_in_the_summary(tmp_path, capsys):
    s = run_scenario(star(5, pattern="allpairs", size=MODEL, network={"buffer": 20}), tmp_path / "a", progress=False)
    err = capsys.readouterr().err.splitlines()
    assert err == ['simfl: warning: synthetic: the fluid model is optimistic here (4 concurrent flows into port s>c0 '
                   '(link c0-s), buffer 20 packets, initial window 10): rerun with network.model = "ns3" for '
                   'packet-level timing']
    [w] = s["incast"]
    assert (w["phase"], w["port"], w["flows"], w["packets"], w["buffer"], w["initial_window"]) == (
        "synthetic", "s>c0 (link c0-s)", 4, 36, 20, 10)
    assert w["message"] == err[0].removeprefix("simfl: warning: ")
    assert read_summary(tmp_path / "a").incast == s["incast"]
    s = run_scenario(star(5, pattern="allpairs", size=MODEL, network={"buffer": 20}, order="rotated"),
                     tmp_path / "b", progress=False)
    assert s["incast"] == [] and capsys.readouterr().err == ""


def test_the_report_shows_the_warning_and_old_summaries_have_none():
    from test_runner import OLD_FEDAD

    from simfl.report import render

    old = json.loads(OLD_FEDAD)
    assert summary_from_dict(old).incast is None and "incast" not in summary_from_dict(old).to_dict()
    assert "Packet-level timing" not in render(summary_from_dict(old))
    text = "phase1: the fluid model is optimistic here (3 concurrent flows ...)"
    report = render(summary_from_dict(old | {"incast": [{"phase": "phase1", "message": text}]}))
    assert f"\n- {text}\n" in report and "**Packet-level timing would be slower.**" in report


def test_an_empty_trace_and_empty_messages():
    sc = star(3, size=0, network={"headers": False})  # 0 bytes, no headers: 0 bits on the wire, nowhere queued
    assert incast(sc) == [] and peaks(sc) == {}


# ------------------------------------------------------------------------------------------------ the keys
def test_buffer_keys_load_and_round_trip(tmp_path):
    sc = scenario_from_dict({
        "name": "k", "workload": "synthetic", "network": {"buffer": 64, "initial_window": 4},
        "nodes": [{"name": "s", "kind": "switch"}, {"name": "s2", "kind": "switch"},
                  {"name": "ap", "kind": "ap", "uplink": {"to": "s", "bandwidth": "1 Gbps", "buffer": 500}}],
        "node_groups": [{"prefix": "c", "count": 2, "uplink": {"to": "s", "bandwidth": "100 Mbps", "buffer": 30}},
                        {"prefix": "d", "count": 1, "cell": "w"}],
        "node_overrides": {"c1": {"uplink": {"buffer": 40}}},
        "links": [{"a": "s", "b": "s2", "bandwidth": "1 Gbps", "buffer": 7}],
        "cells": [{"name": "w", "ap": "ap", "bandwidth": "54 Mbps", "buffer": 80}],
    })
    assert (sc.network.buffer, sc.network.initial_window) == (64, 4)
    assert {ln.name: ln.buffer for ln in sc.links} == {"s-s2": 7, "ap-s": 500, "c0-s": 30, "c1-s": 40}
    assert sc.cells[0].buffer == 80
    p = tmp_path / "k.toml"
    p.write_text(sc.to_toml())
    assert load_scenario(p) == sc
    plain = scenario_from_dict({"name": "d", "workload": "synthetic", "nodes": [
        {"name": "s", "kind": "switch"}, {"name": "c", "kind": "client", "uplink": {"to": "s", "bandwidth": 1e6}}]})
    assert plain.links[0].buffer is None and plain.network.buffer == 100  # unset: network.buffer applies
    assert "buffer" not in tomllib.loads(plain.to_toml())["links"][0]


@pytest.mark.parametrize(("key", "value", "msg"), [
    ("network.buffer", 0, "network.buffer = 0: must be >= 1"),
    ("network.buffer", 10**10, "network.buffer = 10000000000: must be <= 1,000,000,000"),
    ("network.initial_window", 0, "network.initial_window = 0: must be >= 1"),
    ("network.buffer", 1.5, "network.buffer = 1.5: expected an integer"),
    ("links[0].buffer", -3, "links[0].buffer = -3: must be >= 1"),
    ("experiment.send_order", "rotate", 'experiment.send_order = "rotate": must be one of id, rotated, random; '
     "did you mean 'rotated'?"),
    ("synthetic.send_order", 3, "synthetic.send_order = 3: expected a string"),
])
def test_bad_keys_are_one_line_errors(key, value, msg):
    from simfl.config import apply_overrides
    from simfl.schema import toml_value

    d = {"name": "b", "workload": "synthetic",
         "nodes": [{"name": "s", "kind": "switch"}, {"name": "c", "kind": "client"}],
         "links": [{"a": "s", "b": "c", "bandwidth": "1 Gbps"}]}
    apply_overrides(d, [f"{key}={toml_value(value)}"])
    with pytest.raises(SimflError) as e:
        scenario_from_dict(d)
    assert str(e.value) == f"<dict>: {msg}"


def test_only_the_fluid_model_is_checked_and_ns3_reads_the_buffer():
    import dataclasses

    sc = star(11)
    w, m = run(sc)
    assert len(find_incast(m, w.topology, sc)) == 1
    ns3 = sc.replace(network=dataclasses.replace(sc.network, model="ns3", buffer=64))
    assert find_incast(m, w.topology, ns3) == []  # packet-level timing needs no warning
    from simfl.ns3 import Ns3Options

    assert Ns3Options.from_params(ns3.network).buffer_packets == 64  # network.buffer is the ns3 ports' queue
