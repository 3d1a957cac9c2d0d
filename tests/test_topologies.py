"""The scenario library in topologies/: every file loads with the paper's 90 clients, and a network-only all-pairs
exchange and gather run on it no faster than bounds worked out by hand from the file's numbers.

Messages are one AE-5 model: 12,868 payload bytes in 9 packets (8 x 1,460 + 1,188) with 40 + 38 header bytes each,
W = (12,868 + 9 x 78) x 8 = 108,560 wire bits, first packet P = 1,538 x 8 = 12,304 bits.

The bound: every message that crosses a capacity C (a link direction, or a whole WiFi / radio cell, which a
station-to-station message crosses twice) needs its W bits on it, and its last bit still has the route's latency
to travel; and no message starts before its pair's TCP handshake, a header-only packet (78 bytes = 624 bits) there
and one back, each alone on its path: H = 2 x sum over the hops (latency + 624 / C_h) on a symmetric route. So a
pattern in which m crossings share C cannot end before H + m x W / C + (the least latency of a route through C),
with H the least handshake of the pairs whose messages cross C. A WiFi cell (`network.cell_access = "station"`, the
default) carries C x eta(k) while k transmitters (stations, and the access point when it relays) contend: eta(k) is 1
up to 5, then 0.83 at 10, 0.81 at 15, 0.74 from 20, linear in between (simfl/network.py), so there the bound has
C x eta(k). Each case below names the capacity that binds, with m, C, k, the latency and H worked out from the
TOML file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from simfl.config import load_scenario, scenario_from_dict
from simfl.errors import SimflError
from simfl.runner import run_scenario
from simfl.topology import Topology

TOPO = Path(__file__).resolve().parent.parent / "topologies"
FILES = sorted(TOPO.glob("*.toml"))
W = 108_560  # wire bits of one 12,868-byte message
P = 12_304  # wire bits of its first packet
WIRE_BYTES = 13_570


@dataclass(frozen=True)
class Cut:
    """m crossings share the capacity `capacity` (bit/s) of link `link` in direction src > dst (dst "*": a cell);
    `latency` is the least latency of a route through it, that of the route `pair`."""

    link: str
    src: str
    dst: str
    capacity: float
    m: int
    latency: float
    pair: tuple[str, str]
    handshake: float  # H of that pair (the least of the pairs crossing C)
    outage: float = 0.0  # seconds C is down while its messages wait for it
    eta: float = 1.0  # a cell's contention efficiency eta(k) for its k transmitters

    @property
    def resource(self) -> str:
        return f"cell:{self.link}" if self.dst == "*" else f"{self.link}:{self.src}>{self.dst}"

    @property
    def bound(self) -> float:
        return self.handshake + self.m * W / (self.capacity * self.eta) + self.latency + self.outage


# paper-90 and the files that extend it: 90 clients on 100 Mbps / 0.5 ms ports of s1, server on 1 Gbps / 0.5 ms.
# all-pairs: each client's port carries its 89 messages out (and 89 in): 89 W / 100 Mbps + 2 x 0.5 ms = 97.62 ms,
#   after H = 2 x 2 x (0.5 ms + 624 / 1e8) = 2.02496 ms.
# gather: all 90 cross s1 > server: 90 W / 1 Gbps + 1 ms = 10.77 ms, after H = 2 x (0.5 ms + 624 / 1e8 + 0.5 ms +
#   624 / 1e9) = 2.013728 ms.
_PAPER = (Cut("c00-s1", "c00", "s1", 100e6, 89, 1.0e-3, ("c00", "c01"), 2.02496e-3),
          Cut("server-s1", "s1", "server", 1e9, 90, 1.0e-3, ("c00", "server"), 2.013728e-3))

HAND: dict[str, tuple[Cut, Cut]] = {  # stem -> (all-pairs cut, gather cut)
    "paper-90": _PAPER,
    "default": _PAPER,
    "allpairs-90": _PAPER,
    # 3 cells of 30 at 65 Mbps, 2 ms per radio hop, APs and server on 1 Gbps / 0.5 ms.
    # all-pairs: cell1 carries 30 x 29 station-to-station messages twice and 30 x 60 out + 60 x 30 in, its 30
    #   stations and its access point contend (eta(31) = 0.74): 5,340 W / (65 Mbps x 0.74) + 2 x 2 ms
    #   (c1-00 > ap1 > c1-01) = 12.056 s; H = 2 x 2 x (2 ms + 624 / 65e6) = 8.0384 ms (a pair in two cells has a
    #   longer one).
    # gather: 30 stations per cell (eta(30) = 0.74): 30 W / (65 Mbps x 0.74) (67.7 ms; the server's 90 W / 1 Gbps
    #   is 9.8 ms) + 2 + 0.5 + 0.5 ms; H = 2 x (3 ms + 624 / 65e6 + 2 x 624 / 1e9) = 6.021696 ms.
    "wifi-factory": (Cut("cell1", "ap1", "*", 65e6, 2 * 30 * 29 + 2 * 30 * 60, 4.0e-3, ("c1-00", "c1-01"), 8.0384e-3,
                         eta=0.74),
                     Cut("cell1", "ap1", "*", 65e6, 30, 3.0e-3, ("c1-00", "server"), 6.021696e-3, eta=0.74)),
    # 3 access switches of 30 clients (100 Mbps), 1 Gbps uplinks to core, server on 1 Gbps, 0.1 ms per hop.
    # all-pairs: sw1 > core carries 30 x 60 messages: 1,800 W / 1 Gbps = 195.4 ms (a client port: 89 W / 100 Mbps =
    #   96.6 ms), + 4 x 0.1 ms (c00 > sw1 > core > sw2 > c30); H = 2 x (0.4 ms + 624 x (2 / 1e8 + 2 / 1e9)) =
    #   0.827456 ms.
    # gather: core > server carries 90: 90 W / 1 Gbps + 3 x 0.1 ms = 10.07 ms; H = 2 x (0.3 ms + 624 x (1 / 1e8 +
    #   2 / 1e9)) = 0.614976 ms.
    "ethernet-100m": (Cut("sw1-core", "sw1", "core", 1e9, 30 * 60, 0.4e-3, ("c00", "c30"), 0.827456e-3),
                      Cut("server-core", "core", "server", 1e9, 90, 0.3e-3, ("c00", "server"), 0.614976e-3)),
    # the same with 1 Gbps ports and 10 Gbps uplinks / server port: every transmission term is ten times smaller;
    # H = 2 x (0.4 ms + 624 x 2.2e-9) = 0.8027456 ms and 2 x (0.3 ms + 624 x 1.2e-9) = 0.6014976 ms.
    "ethernet-1g": (Cut("sw1-core", "sw1", "core", 10e9, 30 * 60, 0.4e-3, ("c00", "c30"), 0.8027456e-3),
                    Cut("server-core", "core", "server", 10e9, 90, 0.3e-3, ("c00", "server"), 0.6014976e-3)),
    # 6 cells of 15 at 165 Mbps, 2 ms per radio hop; APs and server on 1 Gbps / 0.1 ms; cell6 is down from 1 s
    # to 1.5 s (its [[faults]] entry).
    # all-pairs: every cell carries 2 x 15 x 14 + 2 x 15 x 75 = 2,670 crossings, its 15 stations and its access
    #   point contend (eta(16) = 0.81 - 0.07 / 5 = 0.796): 2.2069 s; cell6's wait 0.5 s for its outage: + 0.5 s +
    #   2 x 2 ms; H = 2 x 2 x (2 ms + 624 / 165e6) = 8.0151273 ms.
    # gather (over in ms, before the outage): 15 stations per cell (eta(15) = 0.81): 15 W / (165 Mbps x 0.81) =
    #   12.18 ms (the server port's 90 W / 1 Gbps = 9.77 ms, less) + 2 + 0.1 + 0.1 ms;
    #   H = 2 x (2.2 ms + 624 / 165e6 + 2 x 624 / 1e9) = 4.4100596 ms.
    "wifi-cells": (Cut("cell6", "ap6", "*", 165e6, 2 * 15 * 14 + 2 * 15 * 75, 4.0e-3, ("c75", "c76"),
                       8.015127273e-3, outage=0.5, eta=0.796),
                   Cut("cell1", "ap1", "*", 165e6, 15, 2.2e-3, ("c00", "server"), 4.410059636e-3, eta=0.81)),
    # 10 cells of 9 on 100 Mbps ports, cell switches on 1 Gbps, edge on 10 Gbps, WAN to the cloud 50 Mbps up and
    # 250 Mbps down, 15 ms.
    # all-pairs: a client port carries 89: 89 W / 100 Mbps = 96.6 ms (a cell switch uplink: 9 x 81 W / 1 Gbps =
    #   79.1 ms) + 2 x 0.1 ms (c00 > cs0 > c01); H = 2 x 2 x (0.1 ms + 624 / 1e8) = 0.42496 ms.
    # gather to the cloud: all 90 cross the WAN up: 90 W / 50 Mbps = 195.4 ms + 3 x 0.1 + 15 ms = 210.7 ms;
    #   H = 15.3 ms + 624 x (1/1e8 + 1/1e9 + 1/1e10 + 1/50e6) there + 15.3 ms + 624 x (1/250e6 + 1/1e10 + 1/1e9 +
    #   1/1e8) back = 30.6288288 ms.
    "hierarchical-plant": (Cut("c00-cs0", "c00", "cs0", 100e6, 89, 0.2e-3, ("c00", "c01"), 0.42496e-3),
                           Cut("wan", "edge", "cloud", 50e6, 90, 15.3e-3, ("c00", "cloud"), 30.6288288e-3)),
    # 9 radio cells of 10 at 10 Mbps, 12 ms per radio hop, ~1.06% burst loss per radio hop; base stations, core and
    # server on 1 Gbps / 0.1 ms. The loss costs no bytes here: a model is 9 packets, and 9 p / (1 - p) rounds to 0
    # retransmitted packets for p = 1.06% and for the 2.1% of two radio hops; and the loss-limited rates are above
    # the fair shares (a radio gather flow's cap: 5.6 Mbps > 1 Mbps).
    # all-pairs: radio1 carries 2 x 10 x 9 + 2 x 10 x 80 = 1,780 crossings, its 10 stations and its base station
    #   contend (eta(11) = 0.83 - 0.02 / 5 = 0.826): 23.39 s + 2 x 12 ms; H = 2 x 2 x (12 ms + 624 / 1e7) =
    #   48.2496 ms.
    # gather: 10 stations per cell (eta(10) = 0.83): 10 W / (10 Mbps x 0.83) = 130.8 ms + 12 + 3 x 0.1 ms;
    #   H = 2 x (12.3 ms + 624 / 1e7 + 3 x 624 / 1e9) = 24.728544 ms.
    "constrained-plant": (Cut("radio1", "bs1", "*", 10e6, 2 * 10 * 9 + 2 * 10 * 80, 24e-3, ("c00", "c01"),
                              48.2496e-3, eta=0.826),
                          Cut("radio1", "bs1", "*", 10e6, 10, 12.3e-3, ("c00", "server"), 24.728544e-3, eta=0.83)),
}

# the shipped networks of docs/network-model.md ("The shipped networks")
LIBRARY = ("ethernet-100m", "ethernet-1g", "wifi-cells", "hierarchical-plant", "constrained-plant", "private-lte")


def synthetic(path: Path, pattern: str):
    """The file's network under one pattern of models, without drawn timeouts (on a lossy plant a lost SYN's 1 s
    would outlast the capacity bounds below)."""
    return load_scenario(path, ['workload="synthetic"', f'synthetic.pattern=["{pattern}"]',
                                "synthetic.message_bytes=12868", "network.loss_timeouts=false"])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_loads_with_90_clients_and_a_server(path):
    sc = load_scenario(path)
    assert len(sc.clients) == 90 and sc.experiment.n_clients == 90
    assert sc.server is not None
    assert path.read_text().startswith(f"# {path.stem}: "), "a comment block saying what the file models"


def test_library_files_exist_and_run_the_method():
    for stem in LIBRARY:
        sc = load_scenario(TOPO / f"{stem}.toml")
        assert sc.name == stem and sc.workload == "fedad"
        assert sc.clients == tuple(f"c{i:02d}" for i in range(90))
        assert "centralised" in sc.experiment.baselines


def _check_cut(sc, cut: Cut) -> None:
    """The cut's numbers are the file's: its capacity, and the latency of the named route through it."""
    topo = Topology.from_scenario(sc)
    res = {r.id: r for r in topo.resources}
    assert res[cut.resource].capacity_bps == cut.capacity
    route = topo.route(*cut.pair)
    assert cut.resource in {h.resource for h in route}
    assert topo.path_latency(*cut.pair) == pytest.approx(cut.latency, rel=1e-12)


def _crossings(run: Path, cut: Cut) -> int:
    links = pl.read_parquet(run / "links.parquet")
    row = links.filter((pl.col("link") == cut.link) & (pl.col("src") == cut.src) & (pl.col("dst") == cut.dst))
    assert row.height == 1
    assert row["bytes"][0] == row["messages"][0] * WIRE_BYTES
    return int(row["messages"][0])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_allpairs_and_gather_respect_hand_bounds(path, tmp_path):
    allpairs_cut, gather_cut = HAND.get(path.stem, (None, None))

    sc = synthetic(path, "allpairs")
    s = run_scenario(sc, tmp_path / "allpairs", progress=False)
    (ap,) = s["patterns"]
    assert ap["messages"] == 90 * 89 and s["totals"]["wire_bytes"] == 90 * 89 * WIRE_BYTES
    if allpairs_cut is not None:
        _check_cut(sc, allpairs_cut)
        assert _crossings(tmp_path / "allpairs", allpairs_cut) == allpairs_cut.m
        assert ap["duration_s"] >= allpairs_cut.bound * (1 - 1e-12)
        # the named capacity is the one that binds: the run ends within 1% of its bound
        assert ap["duration_s"] <= allpairs_cut.bound * 1.01

    sc = synthetic(path, "gather")
    assert sc.synthetic.target == sc.server
    s = run_scenario(sc, tmp_path / "gather", progress=False)
    (g,) = s["patterns"]
    assert g["messages"] == 90
    topo = Topology.from_scenario(sc)
    if gather_cut is None:  # a file without hand numbers: the server's own links bound it
        into = [r for r in topo.resources if r.dst == sc.server]
        lat = min(topo.path_latency(c, sc.server) for c in sc.clients)
        assert g["duration_s"] >= 90 * W / sum(r.capacity_bps for r in into) + lat
        return
    _check_cut(sc, gather_cut)
    assert _crossings(tmp_path / "gather", gather_cut) == gather_cut.m
    assert g["duration_s"] >= gather_cut.bound * (1 - 1e-12)
    # all clients' routes are alike, so they finish together: at the bound plus the pipelining of one packet
    # (at most P / C per hop)
    slack = P * sum(1 / h.capacity_bps for h in topo.route(gather_cut.pair[0], sc.server))
    assert g["duration_s"] <= gather_cut.bound + slack


def test_hand_numbers_name_existing_files():
    assert set(HAND) <= {p.stem for p in FILES}
    assert set(LIBRARY) - {"private-lte"} <= set(HAND)  # its capacities follow traces: the generic bound below


# ----------------------------------------------------------------------------------------- hierarchical plant
def test_hierarchical_plant_routes_to_the_cloud_cross_the_wan():
    sc = load_scenario(TOPO / "hierarchical-plant.toml")
    assert sc.server == "cloud" and sc.node("edge").kind == "gateway"
    wan = next(ln for ln in sc.links if ln.name == "wan")
    assert (wan.a, wan.b, wan.bandwidth_bps, wan.latency_s) == ("edge", "cloud", 50e6, 15e-3)  # up: edge -> cloud
    assert (wan.down.bandwidth_bps, wan.down.latency_s) == (250e6, 15e-3)
    topo = Topology.from_scenario(sc)
    for i in range(90):
        c = f"c{i:02d}"
        hops = topo.route(c, "cloud")
        assert [(h.src, h.dst) for h in hops] == [(c, f"cs{i // 9}"), (f"cs{i // 9}", "backbone"),
                                                   ("backbone", "edge"), ("edge", "cloud")]
        assert hops[-1].link == "wan" and hops[-1].capacity_bps == 50e6
        # 0.1 + 0.1 + 0.1 + 15 ms
        assert topo.path_latency(c, "cloud") == pytest.approx(15.3e-3, rel=1e-12)
    # the method's traffic stays in the plant: no route between two clients crosses the WAN
    assert all(h.link != "wan" for a in ("c00", "c44") for b in ("c08", "c89") for h in topo.route(a, b))
    # cell k holds the nine clients of inlier class k
    assert all(topo.route(f"c{i:02d}", f"cs{i // 9}")[0].link == f"c{i:02d}-cs{i // 9}" for i in range(90))


def test_hierarchical_plant_edge_can_be_made_the_server():
    # the swap its comment documents: the edge becomes the server, the cloud a plain node
    sc = load_scenario(TOPO / "hierarchical-plant.toml", ['nodes[1].kind="server"', 'nodes[2].kind="gateway"'])
    assert sc.server == "edge"
    assert all(h.link != "wan" for h in Topology.from_scenario(sc).route("c00", "edge"))


def test_library_comments_state_the_numbers_they_use():
    """Each library file's comment block gives the rates its tables use (so the two cannot drift silently)."""
    for stem in LIBRARY:
        text = (TOPO / f"{stem}.toml").read_text()
        comment = "\n".join(ln for ln in text.splitlines() if ln.startswith("#"))
        data = tomllib.loads(text)
        media = [n["uplink"] for n in data.get("nodes", []) + data.get("node_groups", []) if "uplink" in n]
        media += data.get("cells", []) + data.get("links", [])
        keys = ("bandwidth", "bandwidth_up", "bandwidth_down", "bandwidth_trace", "bandwidth_trace_up",
                "bandwidth_trace_down")
        for value in {m[k] for m in media for k in keys if k in m}:
            assert value in comment, f"{stem}: {value} not explained in the comment block"


# ----------------------------------------------------------------------------------------- connectivity (networkx)
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_shipped_networks_are_one_component(path):
    sc = load_scenario(path)
    topo = Topology.from_scenario(sc)
    assert topo.nodes == tuple(n.name for n in sc.nodes)  # declaration order
    assert topo.components() == (topo.nodes,)
    assert topo.reachable(sc.server) == set(topo.nodes)


def test_wan_outage_cuts_the_cloud_off():
    # hierarchical-plant: the cloud (the server) hangs off the edge by the "wan" link alone
    sc = load_scenario(TOPO / "hierarchical-plant.toml")
    topo = Topology.from_scenario(sc)
    down = topo.without(["wan"])
    assert down.components() == (tuple(n for n in topo.nodes if n != "cloud"), ("cloud",))
    assert down.reachable("cloud") == {"cloud"} and "cloud" not in down.reachable("c00")
    # c00 still reaches the other 89 clients, the 10 cell switches, the backbone and the edge: 101 nodes
    with pytest.raises(SimflError, match="no route from c00 to cloud.*reaches 101 other node"):
        down.route("c00", "cloud")
    # the rest routes as before, the links table keeps its rows, and the original topology is untouched
    assert down.route("c00", "c89") == topo.route("c00", "c89")
    assert down.resources == topo.resources
    assert len(topo.route("c00", "cloud")) == 4 and topo.components() == (topo.nodes,)


def test_cell_outage_isolates_its_stations():
    sc = load_scenario(TOPO / "wifi-factory.toml")
    topo = Topology.from_scenario(sc)
    stations = [n.name for n in sc.nodes if n.cell == "cell1"]
    assert len(stations) == 30
    comps = topo.without(["cell1"]).components()
    assert len(comps) == 31 and sorted(comps[1:]) == [(s,) for s in sorted(stations)]
    assert set(comps[0]) == set(topo.nodes) - set(stations)
    with pytest.raises(SimflError, match="unknown link or cell 'cell9'"):
        topo.without(["cell9"])


def test_routes_go_around_a_down_link():
    # a ring a - b - c - d - a of 1 ms links: a -> c ties over b and d (2 ms, 2 hops): b, the smaller name, wins;
    # with a-b down the route is a - d - c; with a-b and c-d down there is none.
    sc = scenario_from_dict({"workload": "synthetic", "nodes": [
        {"name": n, "kind": "client"} for n in "abcd"], "links": [
        {"name": f"{x}-{y}", "a": x, "b": y, "bandwidth": "100 Mbps", "latency": "1 ms"}
        for x, y in ("ab", "bc", "cd", "da")]})
    topo = Topology.from_scenario(sc)
    assert [h.dst for h in topo.route("a", "c")] == ["b", "c"]
    assert [h.dst for h in topo.without(["a-b"]).route("a", "c")] == ["d", "c"]
    assert topo.without(["a-b"]).path_latency("a", "c") == pytest.approx(2e-3)
    assert topo.without(["a-b", "c-d"]).components() == (("a", "d"), ("b", "c"))
    with pytest.raises(SimflError, match="no route from a to c"):
        topo.without(["a-b", "c-d"]).route("a", "c")
