"""The WiFi contention check (simfl/incast.py, "WiFi cells") on hand-built cells, and on the shipped plants.

The cell below: stations c0 .. c(n-1) of cell w (100 Mbps, 1 ms), its access point ap and the server srv on
switch s (1 Gbps links), wired hosts x0 .. x2 on s (gateways: no synthetic workload of their own; 1 Gbps, x2 on
1 Mbps); no TCP handshake, so every message sent at 0 starts transmitting at 0. Messages are 12,868 bytes (9
packets, 12,304-bit first packet).

The cell is shared per crossing (`network.cell_access = "flow"`) except in the tests of station access, which
say so: n stations' all-pairs is n (n - 1) flows crossing it twice, so each gets C / (2 n (n - 1)) from 0 to the
end, and the access point's n (n - 1) relayed flows get C / 2 together. A
relayed message reaches the access point's queue 1 ms + 12,304 bits / 100 Mbps after it left (latency and one
packet's store-and-forward: `simfl.network.pipeline_offsets`).
"""

from __future__ import annotations

import json

import pytest

from simfl.config import DEFAULT_SCENARIO, load_scenario, scenario_from_dict
from simfl.incast import CONTENDERS, cell_peaks, find_contention, find_incast, fluid_findings, port_peaks
from simfl.runner import run_scenario
from simfl.summary import read_summary, summary_from_dict
from simfl.workloads import run_synthetic
from simfl.world import World

MODEL = 12_868  # bytes: 9 packets, all in the first window
AP_HOP = 0.001 + 12_304 / 1e8  # when a relayed message that left a station at 0 reaches the access point's queue
EPS = 1e-5  # shares are summed in units of 1 / 2**20 of the cell's capacity (one rounding per flow)


def cell(n: int, *, buffer: int | None = None, bandwidth: str = "100 Mbps", server_bw: str = "1 Gbps",
         access: str = "flow") -> dict:
    c = {"name": "w", "ap": "ap", "bandwidth": bandwidth, "latency": "1 ms"}
    if buffer is not None:
        c["buffer"] = buffer
    return {"name": "cell", "workload": "synthetic", "network": {"handshake": False, "cell_access": access},
            "nodes": [{"name": "s", "kind": "switch"},
                      {"name": "ap", "kind": "ap", "uplink": {"to": "s", "bandwidth": "1 Gbps"}},
                      {"name": "srv", "kind": "server", "uplink": {"to": "s", "bandwidth": server_bw}},
                      {"name": "x0", "kind": "gateway", "uplink": {"to": "s", "bandwidth": "1 Gbps"}},
                      {"name": "x1", "kind": "gateway", "uplink": {"to": "s", "bandwidth": "1 Gbps"}},
                      {"name": "x2", "kind": "gateway", "uplink": {"to": "s", "bandwidth": "1 Mbps"}}],
            "node_groups": [{"prefix": "c", "count": n, "cell": "w"}],
            "cells": [c], "synthetic": {"pattern": ["allpairs"], "message_bytes": MODEL}}


def send(sc, pairs, size=MODEL):
    """Every (src, dst) of `pairs` sends one message at 0; the run's trace and its one cell's peak."""
    w = World(sc)
    for a, b in pairs:
        w.network.send(a, b, kind="synthetic", phase="p", round=0, payload_bits=8 * size)
    w.env.run()
    m = w.recorder.messages_frame()
    [peak] = cell_peaks(m, w.topology, sc)
    return w, m, peak


def stations(sc, n: int | None = None) -> list[str]:
    """The first n stations of cell w (all: None)."""
    return [c for c in sc.clients if sc.node(c).cell == "w"][:n]


def allpairs(names: list[str]) -> list[tuple[str, str]]:
    return [(a, b) for a in names for b in names if a != b]


# ------------------------------------------------------------------------------------------------ relay
@pytest.mark.parametrize("n", [3, 4])
def test_allpairs_inside_a_cell_is_flagged_as_the_access_point_relaying(n):
    """n stations' all-pairs: the access point relays all n (n - 1) flows at C / 2 while the n stations transmit;
    802.11 would give it one transmitter's share, C / (n + 1) < C / 2."""
    sc = scenario_from_dict(cell(n))
    w, m, p = send(sc, allpairs(stations(sc)))
    assert (p.phase, p.cell, p.ap, p.capacity_bps, p.most) == ("p", "w", "ap", 1e8, n + 1)
    r = p.relay
    assert (r.flows, r.stations, r.transmitters) == (n * (n - 1), n, n + 1)
    assert r.ap_share == pytest.approx(0.5, abs=EPS) and r.load == pytest.approx(1.0, abs=EPS)
    assert r.at_s == pytest.approx(AP_HOP, rel=1e-12)  # the first relayed flows reach the access point
    assert p.crowd is None  # n + 1 < CONTENDERS transmitters
    [c] = find_contention(m, w.topology, sc)
    assert (c.phase, c.kind, c.cell, c.ap, c.flows, c.stations, c.cells) == ("p", "relay", "w", "ap", n * (n - 1),
                                                                              n, 1)
    assert c.message == (f"p: the fluid model is optimistic here (cell w: access point ap relays {n * (n - 1)} "
                         f"flows while {n} stations contend with it for the channel; 802.11 shares the channel per "
                         "transmitter, so the access point gets about one station's share of 100 Mbps, not 50% of "
                         'it): rerun with network.model = "ns3" for packet-level timing')


def test_one_station_to_another_gets_what_802_11_gives_the_access_point():
    """c0 -> c1: the access point relays the one flow at C / 2 while c0 sends it at C / 2: exactly one of two
    transmitters' shares, what 802.11 gives it. Two stations to a third: C / 2 for the access point, 1 / 3 in
    802.11: flagged."""
    sc = scenario_from_dict(cell(3))
    _, _, p = send(sc, [("c0", "c1")])
    assert (p.relay, p.crowd, p.most) == (None, None, 2)
    _, _, p = send(sc, [("c0", "c2"), ("c1", "c2")])
    assert (p.relay.flows, p.relay.stations) == (2, 2) and p.relay.ap_share == pytest.approx(0.5, abs=EPS)


def test_a_gather_into_the_cell_from_wired_clients_is_not_flagged():
    """x0, x1 -> c0: the access point transmits alone (its station only receives): the fluid model's sharing
    per flow is 802.11's."""
    sc = scenario_from_dict(cell(3))
    w, m, p = send(sc, [("x0", "c0"), ("x1", "c0")])
    assert (p.relay, p.crowd, p.most) == (None, None, 1)
    assert find_contention(m, w.topology, sc) == []


def test_a_relayed_flow_bottlenecked_elsewhere_leaves_the_stations_the_channel():
    """x2 (1 Mbps uplink) -> c0 while c1 uploads to the server: the access point relays one flow at 1 Mbps, 1% of
    the cell, less than one of two transmitters' shares: not flagged."""
    sc = scenario_from_dict(cell(3))
    _, _, p = send(sc, [("x2", "c0"), ("c1", "srv")])
    assert (p.relay, p.crowd, p.most) == (None, None, 2)


def test_a_single_station_upload_is_not_flagged():
    sc = scenario_from_dict(cell(1))
    w, m, p = send(sc, [("c0", "srv")])
    assert (p.relay, p.crowd, p.most) == (None, None, 1)
    assert fluid_findings(m, w.topology, sc) == ([], [])


# ------------------------------------------------------------------------------------------------ crowd
@pytest.mark.parametrize("k", [CONTENDERS - 1, CONTENDERS, CONTENDERS + 2])
def test_stations_uploading_at_once_are_flagged_from_the_threshold(k):
    """k stations -> the server (1 Gbps): each gets C / k, the cell carries all of C: flagged from 10 stations."""
    assert CONTENDERS == 10
    sc = scenario_from_dict(cell(12))
    w, m, p = send(sc, [(c, "srv") for c in stations(sc, k)])
    assert (p.relay, p.most) == (None, k)
    found = find_contention(m, w.topology, sc)
    if k < CONTENDERS:
        assert p.crowd is None and found == []
        return
    assert (p.crowd.flows, p.crowd.stations, p.crowd.at_s) == (0, k, 0.0)
    assert p.crowd.load == pytest.approx(1.0, abs=EPS)
    [c] = found
    assert (c.kind, c.cell, c.flows, c.stations) == ("crowd", "w", 0, k)
    assert c.message == (f"p: the fluid model is optimistic here (cell w: {k} transmitters at once use 100% of 100 "
                         "Mbps; 802.11 loses airtime to collisions and backoff, so that many contenders get about "
                         'three quarters of it): rerun with network.model = "ns3" for packet-level timing')


def test_a_crowd_bottlenecked_elsewhere_is_not_flagged():
    """12 stations -> a server behind a 10 Mbps link: each flow gets 10 / 12 Mbps, the cell carries 10% of its
    capacity, less than 802.11's three quarters."""
    sc = scenario_from_dict(cell(12, server_bw="10 Mbps"))
    _, _, p = send(sc, [(c, "srv") for c in stations(sc)])
    assert (p.relay, p.crowd, p.most) == (None, None, 12)


def test_a_duplex_cell_is_not_checked():
    """A cell with a channel per direction (a scheduled radio such as LTE) is left out."""
    d = cell(4)
    del d["cells"][0]["bandwidth"]
    d["cells"][0].update(bandwidth_up="100 Mbps", bandwidth_down="100 Mbps")
    sc = scenario_from_dict(d)
    w = World(sc)
    run_synthetic(w, sc)
    m = w.recorder.messages_frame()
    assert cell_peaks(m, w.topology, sc) == [] and find_contention(m, w.topology, sc) == []


# ------------------------------------------------------------------------------------------------ station access
@pytest.mark.parametrize("n", [3, 9])
def test_station_access_flags_no_relay_in_a_cell_of_fewer_than_contenders(n):
    """Under station access the fluid model itself shares the channel per transmitter at C eta(k): 3 or 9
    stations' all-pairs, and 12 stations uploading at once, are not flagged."""
    sc = scenario_from_dict(cell(12, access="station"))
    for pairs in (allpairs(stations(sc, n)), [(c, "srv") for c in stations(sc)]):
        w, m, p = send(sc, pairs)
        assert (p.relay, p.crowd) == (None, None) and find_contention(m, w.topology, sc) == []


def test_station_access_flags_the_relay_of_a_crowded_cell():
    """10 stations' all-pairs under station access: 11 transmitters at C eta(11) = 0.826 C (eta(11) = 0.83 -
    0.02 / 5), the access point relaying while 10 stations transmit: flagged (ns-3: up to 2.3x)."""
    sc = scenario_from_dict(cell(10, access="station"))
    w, m, p = send(sc, allpairs(stations(sc)))
    assert (p.relay.flows, p.relay.stations, p.crowd) == (90, 10, None)
    assert p.relay.load == pytest.approx(0.826, abs=180 * EPS)  # 180 flow crossings, each rounded
    [c] = find_contention(m, w.topology, sc)
    assert (c.kind, c.access, c.flows, c.stations) == ("relay", "station", 90, 10)
    assert c.message == ("p: the fluid model is optimistic here (cell w: access point ap relays 90 flows while 10 "
                         "stations contend with it for the channel; the fluid model shares it per transmitter (the "
                         "cell carrying 83% of 100 Mbps), but packet-level so crowded a cell relayed up to 2.3x slower "
                         "(lost frames, the access point's queue)): rerun with network.model = \"ns3\" for "
                         "packet-level timing")


# ------------------------------------------------------------------------------------------------ the AP's queue
def test_the_access_points_queue_overflows_from_its_stations_and_drains_at_one_share():
    """12 stations' all-pairs (id order): each station's first message (9 packets, one burst) reaches the access
    point at AP_HOP, from 12 stations, each an ingress of its own: 108 packets > 100; 11 stations: 99 <= 100.
    Meanwhile the 12 stations transmit: it drains at one transmitter's share, C eta(13) / 13 with eta(13) =
    0.83 - 0.02 x 3 / 5 = 0.818: 6.29 Mbps."""
    sc = scenario_from_dict(cell(12))
    w, m, _ = send(sc, allpairs(stations(sc)))
    [x] = find_incast(m, w.topology, sc)
    assert (x.port, x.resource, x.node, x.flows, x.packets, x.ingresses, x.buffer, x.contending) == (
        "ap on cell w", "cell:w", "ap", 12, 108, 12, 100, 12)
    assert x.at_s == pytest.approx(AP_HOP, rel=1e-12) and x.capacity_bps == 1e8
    assert x.message == ("p: the fluid model is optimistic here (cell w: access point ap relays 12 flows, 108 "
                         "packets in their first windows, into a 100-packet queue while 12 stations contend with "
                         "it for the channel, so it drains at one transmitter's share of 100 Mbps, about 6.29 "
                         'Mbps): rerun with network.model = "ns3" for packet-level timing, or give the cell a '
                         "larger buffer")
    sc = scenario_from_dict(cell(11))
    w, m, _ = send(sc, allpairs(stations(sc)))
    assert find_incast(m, w.topology, sc) == []
    ap = {p.port: p for p in port_peaks(m, w.topology, sc)}["ap on cell w"]
    assert (ap.flows, ap.packets, ap.ingresses, ap.contending) == (11, 99, 11, 11)


def test_an_access_point_alone_keeps_the_port_message():
    """x0 -> each of 12 stations, 29,200 bytes (20 packets, a first window of 10, in flight until its fluid
    transmission ends): 120 packets over one ingress faster than the cell; no station transmits: the plain
    incast message."""
    sc = scenario_from_dict(cell(12))
    w, m, _ = send(sc, [("x0", c) for c in stations(sc)], 29_200)
    [x] = find_incast(m, w.topology, sc)
    assert (x.port, x.flows, x.packets, x.ingresses, x.contending) == ("ap on cell w", 12, 120, 1, 0)
    assert x.message.startswith("p: the fluid model is optimistic here (12 concurrent flows into port ap on cell w")


# ------------------------------------------------------------------------------------------------ the run
def test_the_run_warns_and_records_contention_in_the_summary(tmp_path, capsys):
    s = run_scenario(scenario_from_dict(cell(3)), tmp_path / "a", progress=False)
    err = capsys.readouterr().err.splitlines()
    [c] = s["contention"]
    assert s["incast"] == [] and err == [f"simfl: warning: {c['message']}"]
    assert (c["phase"], c["kind"], c["cell"], c["ap"], c["flows"], c["stations"], c["cells"]) == (
        "synthetic", "relay", "w", "ap", 6, 3, 1)
    assert read_summary(tmp_path / "a").contention == s["contention"]
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["contention"] == s["contention"]
    one = cell(1)
    one["synthetic"].update(pattern=["gather"], target="srv")  # one station uploads
    s = run_scenario(scenario_from_dict(one), tmp_path / "b", progress=False)
    assert s["totals"]["messages"] == 1 and s["contention"] == [] and capsys.readouterr().err == ""


def test_the_worst_cell_of_a_phase_a_relay_before_a_crowd():
    """Cell v: 12 stations upload to the server (a crowd); cell w: 3 stations' all-pairs (a relay): the phase's
    finding is w's relay, of 2 cells flagged."""
    d = cell(3)
    d["cells"].append({"name": "v", "ap": "ap2", "bandwidth": "100 Mbps", "latency": "1 ms"})
    d["nodes"].append({"name": "ap2", "kind": "ap", "uplink": {"to": "s", "bandwidth": "1 Gbps"}})
    d["node_groups"].append({"prefix": "v", "count": 12, "cell": "v"})
    sc = scenario_from_dict(d)
    w = World(sc)
    for a, b in allpairs(stations(sc)) + [(v, "srv") for v in sc.clients if v.startswith("v")]:
        w.network.send(a, b, kind="synthetic", phase="p", round=0, payload_bits=8 * MODEL)
    w.env.run()
    m = w.recorder.messages_frame()
    peaks = {p.cell: p for p in cell_peaks(m, w.topology, sc)}
    assert (peaks["v"].relay, peaks["v"].crowd.stations) == (None, 12)
    assert (peaks["w"].relay.flows, peaks["w"].crowd) == (6, None)
    [c] = find_contention(m, w.topology, sc)
    assert (c.kind, c.cell, c.flows, c.stations, c.cells) == ("relay", "w", 6, 3, 2)
    assert "(cell w, the worst of 2: access point ap relays 6 flows while 3 stations" in c.message


def test_the_report_shows_contention_and_old_summaries_have_none():
    from test_runner import OLD_FEDAD

    from simfl.report import render

    old = json.loads(OLD_FEDAD)
    assert summary_from_dict(old).contention is None and "contention" not in summary_from_dict(old).to_dict()
    text = "phase1: the fluid model is optimistic here (cell cell1: access point ap1 relays ...)"
    report = render(summary_from_dict(old | {"contention": [{"phase": "phase1", "message": text}]}))
    assert f"\n- {text}\n" in report and "**Packet-level timing would be slower.**" in report
    assert "WiFi contention" in report and "Incast" not in report


# ------------------------------------------------------------------------------------------------ the plants
PLANTS = DEFAULT_SCENARIO.parent


@pytest.mark.parametrize(("plant", "cells", "per_cell"), [
    ("constrained-plant", 9, 10), ("wifi-cells", 6, 15), ("wifi-factory", 3, 30)])
def test_the_wifi_plants_against_the_ns3_cell_rows(plant, cells, per_cell):
    """ns-3 (docs/network-model.md, "WiFi contention"), against station access (the default): a gather into the
    first cell from every client outside it matched the fluid model (0.87-0.99), all-pairs inside it of 10 and 30
    stations did not (1.36, 2.27; 15: 1.14), every station uploading at once did (0.99-1.09). The default synthetic
    workload, all-pairs of the 90 clients: every cell's access point relays while its 10-30 stations send: flagged;
    a gather to the server: every cell's stations upload at once: not flagged."""
    sc = load_scenario(PLANTS / f"{plant}.toml", ["workload=synthetic"])
    first = sc.cells[0]
    inside = [c for c in sc.clients if sc.node(c).cell == first.name]
    outside = [c for c in sc.clients if sc.node(c).cell != first.name]
    assert len(inside) == per_cell
    w = World(sc)
    for a in outside:
        w.network.send(a, inside[0], kind="synthetic", phase="into", round=0, payload_bits=8 * MODEL)
    for a, b in allpairs(inside):
        w.network.send(a, b, kind="synthetic", phase="inside", round=0, payload_bits=8 * MODEL)
    w.env.run()
    m = w.recorder.messages_frame()
    found = {c.phase: c for c in find_contention(m, w.topology, sc)}
    assert "into" not in found
    c = found["inside"]
    assert (c.kind, c.cell, c.ap, c.flows, c.stations, c.cells) == ("relay", first.name, first.ap,
                                                                     per_cell * (per_cell - 1), per_cell, 1)
    w = World(sc)
    run_synthetic(w, sc)  # all-pairs of the 90 clients
    [c] = find_contention(w.recorder.messages_frame(), w.topology, sc)
    assert (c.kind, c.stations, c.cells) == ("relay", per_cell, cells)
    sc = load_scenario(PLANTS / f"{plant}.toml", ["workload=synthetic", 'synthetic.pattern=["gather"]'])
    w = World(sc)
    run_synthetic(w, sc)
    assert find_contention(w.recorder.messages_frame(), w.topology, sc) == []


def test_the_lte_plant_is_not_flagged():
    sc = load_scenario(PLANTS / "private-lte.toml", ["workload=synthetic", 'synthetic.pattern=["gather"]'])
    assert all(c.duplex for c in sc.cells)
    w = World(sc)
    run_synthetic(w, sc)
    assert find_contention(w.recorder.messages_frame(), w.topology, sc) == []
