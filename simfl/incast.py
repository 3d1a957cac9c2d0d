"""Where the fluid model is optimistic: many TCP flows converging on one port at once (incast), and WiFi cells
whose stations and access point contend for the channel.

The fluid network (`simfl.network`) has no finite buffers: any number of flows share a port fairly and none loses a
packet. A packet network does not. Each new TCP transfer starts with a burst of its initial window (IW segments)
and then doubles its window every round trip (slow start); when more packets converge on one output port at once
than its drop-tail queue holds, the port drops some, and a transfer of a few packets cannot fast-retransmit: it
waits for a retransmission timeout (at least 200 ms on Linux). Packet-level (the ns3 backend) the all-pairs
exchange of 90 models on one switch takes 4.5-5.6x the fluid time, a gather of 90 models to a 1 Gbps server 36x
(docs/network-model.md, "Incast"). This module finds such moments in a finished run's messages trace, per phase
and port. It is a check on the fluid model only: a run on the ns3 backend (`network.model`) is not checked.

The check, for every message of the trace (route from the topology; with [[faults]], the route over what was up
just before its transmission ended, `simfl.trace.routing_states`, as the export draws it):

1. **Its burst** (`slow_start_burst`): the most packets it throws at its bottleneck faster than the bottleneck
   drains them: its first window, k = min(IW, its packets) (`network.initial_window`), or, for a longer message, a
   later round of slow start, which sends two packets per ACK while the bottleneck drains one (69 packets: windows
   10, 20, 39, a burst of 20).
2. **When it leaves the sender.** A sender's network card emits the first windows of its transfers one after
   another, in the order they were sent (`t_start`, then message ID), as a FIFO queue does: the first window starts
   at b = max(t_start, the end of the sender's previous one) and takes (its wire bits) / (the sender's first-hop
   capacity). This is where the send order (`simfl.order`) shows: in the fluid model all of a client's messages go
   out at once.
3. **How long it is in flight.** A message that fits in its first window is all in it: [b, end of the window). A
   longer one stays window-limited until its fluid transmission ends: [b, max(end of the window, t_tx)).
4. **At each port of its route**, that interval shifted by the hop's offset (`simfl.network.pipeline_offsets`:
   latency and store-and-forward of the hops before it). A port is the output queue of one link direction, or one
   transmitter's queue on a cell; its ingress is the link direction (or cell) the message arrived on, or the
   sending node itself at the first hop. An access point's queue on a shared cell (below) has each of its stations
   as an ingress of the cell's speed: 802.11 gives every station its own turn to transmit into it.

Per port and phase a sweep over the intervals' start and end events finds the moment when the concurrent flows'
bursts add up to the most packets while they **converge**: they arrive over ingresses that together can deliver
faster than the port sends (two or more ingresses of the port's speed; one faster link into a slower port also
converges; the sending node counts at the port's speed, so a node's own flows alone never do, and ports that no
flows can converge on are left out). When those packets exceed the port's buffer (`buffer` of the link or cell,
else `network.buffer`) the run is flagged for that phase: the fluid times there are optimistic. Ends sort before
starts at the same instant (a burst that ends as the next begins does not overlap it); times are integers
(picoseconds) so that this holds exactly.

**WiFi cells** (shared cells: one channel for every station and the access point; a duplex cell is a scheduled
radio with a channel per direction, left out). 802.11 shares a cell per transmitter and loses airtime to collisions
and backoff. Under station access (`network.cell_access = "station"`, the default; `simfl.network`) the fluid model
does so too, at C eta(k); under "flow" it shares C per flow crossing, at full capacity however many nodes transmit.
Packet-level (ns3 backend, docs/network-model.md "WiFi contention") traffic the access point sends alone matched
both (0.87-0.99); 10-30 stations uploading at once took 1.23-1.35x the per-flow time and 1.00-1.09x the station
access time; all-pairs inside a cell (the access point relays while its stations send) 1.41-3.06x and 1.13-2.27x.
So per phase and cell a sweep over the fluid model's own transmissions at the cell's ports (a message from
`t_start` to `t_tx`, shifted to the hop as in 4., at its mean fluid rate, its wire bits / (t_tx - t_start); not the
bursts above: the question here is which share of the channel the fluid model gives each transmitter) finds, under
"flow":

- **relay**: a moment when the access point transmits flows while k >= 1 of its stations also transmit, and the
  fluid model gives the access point's flows more than 1 / (k + 1) of C, one transmitter's share, which is about
  what 802.11 gives it (worst: the largest multiple of that share);
- **crowd**: a moment when `CONTENDERS` or more transmitters (stations, and the access point if it sends) are at
  once, and their flows use more than `CROWD_LOAD` of C, which is about what that many contenders got in ns-3
  (worst: the most transmitters, then the most load). 10 is the fewest contenders measured (1.30x); fewer were
  not measured, and a transfer alone matched, so fewer are not flagged. A crowd whose flows are bottlenecked
  elsewhere (stations sending into another, busier cell) uses less of the channel and is not flagged: there ns-3
  matched.

Under station access the fluid model already gives the access point one transmitter's share and a crowd C eta(k):
then only a relay while `CONTENDERS` or more stations transmit is flagged (the 1.13-2.27x that remain), and never a
crowd. Either flags the cell for that phase (`find_contention`: the worst cell per phase). Where the access point's
own queue overflows (an "ap on cell" port above) while k stations transmit, the incast warning says that it drains
at one transmitter's share, C eta(k + 1) / (k + 1) (`simfl.network.contention_efficiency`).

Cost: O(M log M) for M messages, vectorised; its memory is a few numpy columns per message and per port visit,
built and swept in chunks, and released before the run writes its traces (so a run's peak memory is unchanged).
"""

from __future__ import annotations

import dataclasses
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np
import polars as pl

from simfl.config import Scenario
from simfl.messages import packetize
from simfl.network import contention_efficiency, pipeline_offsets
from simfl.topology import Hop, Topology
from simfl.trace import routing_states
from simfl.units import format_rate

__all__ = ["PortPeak", "Incast", "CellMoment", "CellPeak", "Contention", "CONTENDERS", "CROWD_LOAD", "port_peaks",
           "cell_peaks", "find_incast", "find_contention", "fluid_findings", "warn_incast", "slow_start_burst"]

_LOCAL = "(sender)"  # the ingress of a route's first hop: the sending node itself
_SCALE = 1 << 29  # ingress capacities in units of the port's capacity / _SCALE (exact integer sums, int32 each)
_PS, _NS, _PS_UP_TO_S = 1e-12, 1e-9, 1e6  # time unit of the sweep: picoseconds up to 1e6 s (int64), then ns
_BATCH = 1 << 16  # port visits swept at once (about 8 MB of arrays)
_CHUNK = 1 << 16  # messages whose port visits are built at once
_RATE = 1 << 20  # a flow's rate at a cell port in units of the cell's capacity / _RATE (exact integer sums)
CONTENDERS = 10  # transmitters at once on a cell from which 802.11's contention is flagged (the fewest measured)
CROWD_LOAD = 0.75  # ... when their flows use more than this share of the cell (ns-3: 1 / 1.35 .. 1 / 1.25)


@dataclass(frozen=True)
class PortPeak:
    """One port in one phase: the most flows ever in flight through it, and its worst converging moment."""

    phase: str
    port: str  # "s1>c00 (link c00-s1)" or "ap1 on cell w1"
    resource: str  # the link direction or cell (its id in the links table)
    node: str  # the node whose output queue it is
    buffer: int  # packets
    max_flows: int  # the most flows in flight through the port at one moment, converging or not
    flows: int  # flows in flight at the worst converging moment (0: the flows never converged)
    packets: int  # their bursts (`slow_start_burst`), in packets
    ingresses: int  # the ingresses they arrived over
    at_s: float  # when that moment begins (simulated s)
    capacity_bps: float = 0.0  # the port's (nominal) capacity
    contending: int = 0  # on a shared cell: its stations transmitting at that moment (the fluid model's view)

    @property
    def overflows(self) -> bool:
        return self.packets > self.buffer


@dataclass(frozen=True)
class Incast:
    """The worst overflowing port of one phase: `flows` in flight whose bursts add up to `packets` over
    `ingresses` ingresses, more than the port's `buffer`, from `at_s` on; `ports`: how many ports of the phase
    overflow."""

    phase: str
    port: str
    resource: str
    node: str
    flows: int
    packets: int
    ingresses: int
    buffer: int
    initial_window: int
    at_s: float  # when the worst moment begins (simulated s)
    ports: int
    capacity_bps: float = 0.0  # the port's capacity
    contending: int = 0  # an access point's port: its stations transmitting meanwhile (each its own transmitter)

    @property
    def message(self) -> str:
        if self.contending:  # an access point's queue on a shared cell
            c, k = self.capacity_bps, self.contending + 1
            return (f"{self.phase}: the fluid model is optimistic here (cell {self.resource.removeprefix('cell:')}: "
                    f"access point {self.node} relays {self.flows:,} flows, {self.packets:,} packets in their first "
                    f"windows, into a {self.buffer:,}-packet queue while {self.contending:,} stations contend with it "
                    f"for the channel, so it drains at one transmitter's share of {_rate(c)}, about "
                    f"{_rate(c * contention_efficiency(k) / k)}): rerun with network.model = \"ns3\" for packet-level "
                    "timing, or give the cell a larger buffer")
        return (f"{self.phase}: the fluid model is optimistic here ({self.flows} concurrent flows into port "
                f"{self.port}, buffer {self.buffer} packets, initial window {self.initial_window}): rerun with "
                f'network.model = "ns3" for packet-level timing')

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "message": self.message}


@dataclass(frozen=True)
class CellMoment:
    """A moment on a shared cell (the fluid model's transmissions): the access point's flows in flight, its
    stations transmitting, the shares of the cell's capacity the access point's flows and all of them use."""

    flows: int
    stations: int
    ap_share: float
    load: float
    at_s: float  # when it begins (simulated s)

    @property
    def transmitters(self) -> int:
        return self.stations + (self.flows > 0)


@dataclass(frozen=True)
class CellPeak:
    """One shared cell in one phase (module doc, "WiFi cells"): `relay`, its worst moment when the access point
    gets more than one transmitter's share while stations transmit; `crowd`, its worst moment with `CONTENDERS` or
    more transmitters using more than `CROWD_LOAD` of it (None: no such moment); `most`: the most transmitters at
    one moment."""

    phase: str
    cell: str
    ap: str
    capacity_bps: float
    most: int
    relay: CellMoment | None
    crowd: CellMoment | None

    @property
    def flagged(self) -> bool:
        return self.relay is not None or self.crowd is not None


@dataclass(frozen=True)
class Contention:
    """The worst flagged cell of one phase (a relay before a crowd; module doc): at `at_s` the access point `ap`
    transmits `flows` flows at `ap_share` of the cell's capacity, `stations` stations transmit, all together at
    `load` of it; `cells`: how many cells of the phase are flagged."""

    phase: str
    kind: str  # "relay" or "crowd"
    cell: str
    ap: str
    capacity_bps: float
    flows: int
    stations: int
    ap_share: float
    load: float
    at_s: float
    cells: int
    access: str = "flow"  # the run's network.cell_access

    @property
    def message(self) -> str:
        c, where = _rate(self.capacity_bps), f"cell {self.cell}" + (f", the worst of {self.cells}" * (self.cells > 1))
        if self.access == "station":
            what = (f"access point {self.ap} relays {self.flows:,} flows while {self.stations:,} stations contend "
                    f"with it for the channel; the fluid model shares it per transmitter (the cell carrying "
                    f"{min(1.0, self.load):.0%} of {c}), but packet-level so crowded a cell relayed up to 2.3x slower "
                    "(lost frames, the access point's queue)")
        elif self.kind == "relay":
            what = (f"access point {self.ap} relays {self.flows:,} flows while {self.stations:,} stations contend "
                    "with it for the channel; 802.11 shares the channel per transmitter, so the access point gets "
                    f"about one station's share of {c}, not {self.ap_share:.0%} of it")
        else:
            what = (f"{self.stations + (self.flows > 0):,} transmitters at once use {min(1.0, self.load):.0%} of "
                    f"{c}; 802.11 loses airtime to collisions and backoff, so that many contenders get about three "
                    "quarters of it")
        return (f"{self.phase}: the fluid model is optimistic here ({where}: {what}): rerun with "
                'network.model = "ns3" for packet-level timing')

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "message": self.message}


def _rate(bps: float) -> str:
    """A rate to three significant digits ("10.3 Mbps")."""
    return format_rate(float(f"{bps:.3g}"))


class _Routes:
    """The routes of the trace's (source, destination) pairs, compact (a trace of a million messages may hold a
    million routes): per route its shape (the capacities and latencies of its hops, which fix the offsets
    `simfl.network.pipeline_offsets` gives), per hop its port. A port is the output queue of a link direction, or
    of one transmitter on a cell; its ingress for a hop is the previous hop's resource (the sender at the first)."""

    def __init__(self, topology: Topology, scenario: Scenario) -> None:
        self.topology = topology
        default = scenario.network.buffer
        self.buffer_of = {ln.name: ln.buffer or default for ln in scenario.links}
        self.buffer_of.update({c.name: c.buffer or default for c in scenario.cells})
        shared = [c for c in scenario.cells if not c.duplex]
        self.station = scenario.network.cell_access == "station"  # the fluid model shares cells per transmitter
        cap = {r.id: r.capacity_bps for r in topology.resources}
        self.cells = [(c.name, c.ap, cap[f"cell:{c.name}"]) for c in shared]  # module doc, "WiFi cells"
        self.cell_of = {f"cell:{c.name}": i for i, c in enumerate(shared)}
        self.port_cell: list[int] = []  # per port: its shared cell (index in `cells`), or -1
        self.port_ap: list[bool] = []  # per port: is it the access point's transmitter on its shared cell
        self.res_index = {r.id: i for i, r in enumerate(topology.resources)}
        self.ports: dict[tuple[str, str], int] = {}
        self.info: list[tuple[str, str, str, int]] = []  # port name, resource, node, buffer
        self.port_res: list[int] = []  # the port's resource (index in the topology's resources)
        self.port_cap: list[float] = []
        self.shapes: dict[tuple[tuple[float, float], ...], int] = {}
        self.shape_rows: tuple[list[float], list[float], list[float]] = ([], [], [])  # latency, s-a-f, capacity
        self.shape_first: list[int] = []
        self.shape_of = array("i")  # per route
        self.hops = array("i")  # per hop of each route in turn: its port

    def _port(self, h: Hop) -> int:
        p = self.ports.get((h.resource, h.src))
        if p is None:
            p = self.ports[(h.resource, h.src)] = len(self.info)
            name = f"{h.src}>{h.dst} (link {h.link})" if h.medium == "p2p" else f"{h.src} on cell {h.link}"
            self.info.append((name, h.resource, h.src, self.buffer_of.get(h.link, 0)))
            self.port_res.append(self.res_index[h.resource])
            self.port_cap.append(h.capacity_bps)
            cell = self.cell_of.get(h.resource, -1)
            self.port_cell.append(cell)
            self.port_ap.append(cell >= 0 and self.cells[cell][1] == h.src)
        return p

    def add(self, src: str, dst: str, topology: Topology) -> None:
        """The route of src -> dst on `topology` (the whole one, or that without what a fault held down,
        `simfl.trace.routing_states`), or on the whole topology where that one has none (a message that no route
        could carry)."""
        hops = topology.route_or_none(src, dst) or self.topology.route_tuple(src, dst)
        shape = tuple([(h.capacity_bps, h.latency_s) for h in hops])
        s = self.shapes.get(shape)
        if s is None:
            s = self.shapes[shape] = len(self.shape_first)
            self.shape_first.append(len(self.shape_rows[0]))
            lat, sf = pipeline_offsets(hops)
            for col, v in zip(self.shape_rows, (lat[:-1], sf[:-1], [hops[0].capacity_bps] * len(hops))):
                col.extend(v)
        self.shape_of.append(s)
        ports, append = self.ports, self.hops.append  # once per message: the known ports looked up inline
        for h in hops:
            p = ports.get((h.resource, h.src))
            append(self._port(h) if p is None else p)

    def columns(self) -> dict[str, np.ndarray]:
        """Per route: its first hop row, length and shape row; per shape row: latency, s-a-f, first capacity; per
        hop row: port, ingress (resource index; the sender: one past the last; into an access point's queue on
        its shared cell, the sending station's port: past that) and its capacity x _SCALE of the
        port's (a faster ingress than 2x the port changes nothing); per port: can flows converge on it at all
        (its ingresses together faster than it), its capacity, its shared cell (-1: none) and whether it is the
        cell's access point."""
        shape = np.frombuffer(self.shape_of, np.int32)
        starts = np.asarray(self.shape_first + [len(self.shape_rows[0])], np.int64)
        length = np.diff(starts)[shape]
        first = np.cumsum(length) - length
        port = np.frombuffer(self.hops, np.int32)
        prev = np.full(len(port), -1, np.int32)
        prev[1:] = port[:-1]
        prev[first] = -1
        res, cap = np.asarray(self.port_res, np.int64), np.asarray(self.port_cap, np.float64)
        n_res, cell, ap = len(self.res_index), np.asarray(self.port_cell, np.int64), np.asarray(self.port_ap, bool)
        station = (prev >= 0) & ap[port] & (cell[prev] == cell[port])  # into an access point from its station
        ing = np.where(station, n_res + 1 + prev, np.where(prev >= 0, res[prev], n_res))
        ratio = np.where(prev >= 0, np.minimum(2 * _SCALE, np.floor(cap[prev] / cap[port] * _SCALE)), _SCALE)
        _, one = np.unique(port.astype(np.int64) * (n_res + 1 + len(self.info)) + ing, return_index=True)
        can = np.bincount(port[one], weights=ratio[one], minlength=len(self.info)) > _SCALE
        return {"first": first, "length": length, "shape_row": starts[:-1][shape], "port": port, "ing": ing,
                "ratio": ratio.astype(np.int32), "can": can, "cap": cap, "cell": cell, "ap": ap,
                **{c: np.asarray(x, np.float64) for c, x in zip(("lat", "sf", "c0"), self.shape_rows)}}


def slow_start_burst(packets: int, initial_window: int) -> int:
    """The most packets a transfer of `packets` packets puts in its bottleneck's queue in one round of slow start:
    its first window, w_1 = min(IW, packets), which arrives at line rate; then round i sends w_i = min(2 w_(i-1),
    what is left), two packets on each of the first w_i / 2 ACKs of the round before while the bottleneck, which
    clocks those ACKs, drains one: the queue grows by ceil(w_i / 2). 9 packets: 9; 10 to 20: 10; 69 (100 kB):
    windows 10, 20, 39 -> 20; 78 (an AE-7 update): 10, 20, 40, 8 -> 20."""
    w = burst = sent = min(initial_window, packets)
    while sent < packets:
        w = min(2 * w, packets - sent)
        burst = max(burst, (w + 1) // 2)
        sent += w
    return burst


def _first_windows(bits: np.ndarray, scenario: Scenario) -> tuple[np.ndarray, ...]:
    """Per payload size: its slow-start burst in packets (`slow_start_burst`), the wire bits of its first window,
    its first packet's wire bits, and whether the first window holds the whole message."""
    net = scenario.network
    out: tuple[list[Any], ...] = ([], [], [], [])
    for b in bits.tolist():
        pk = packetize(b, net.mtu, net.ip_header_bytes, net.link_header_bytes, net.headers)
        k = min(net.initial_window, pk.n_packets)
        whole = k == pk.n_packets
        for col, v in zip(out, (slow_start_burst(pk.n_packets, net.initial_window),
                                8 * (pk.wire_bytes if whole else k * pk.first_packet_bytes),
                                8 * pk.first_packet_bytes, whole)):
            col.append(v)
    return np.array(out[0], np.int32), np.array(out[1], np.float64), np.array(out[2], np.float64), \
        np.array(out[3], bool)


def _codes(messages: pl.DataFrame, topology: Topology, state: np.ndarray) -> tuple[dict[str, np.ndarray], list[str]]:
    """The trace's columns the check reads, in order of t_start then msg_id, names as numbers: src and dst index
    the topology's nodes, phase the phases in the order met, state the topology each was routed on
    (`simfl.trace.routing_states`)."""
    phase = messages.get_column("phase")
    phases = phase.unique(maintain_order=True).to_list()
    nodes = pl.Enum(list(topology.nodes))
    cols = {"src": messages.get_column("src").cast(nodes).to_physical().to_numpy().astype(np.int32),
            "dst": messages.get_column("dst").cast(nodes).to_physical().to_numpy().astype(np.int32),
            "phase": phase.cast(pl.Enum(phases)).to_physical().to_numpy().astype(np.int32), "state": state}
    for c in ("payload_bits", "wire_bytes", "t_start", "t_tx"):
        cols[c] = messages.get_column(c).to_numpy()
    order = np.lexsort((messages.get_column("msg_id").to_numpy(), cols["t_start"]))
    cols = {c: x[order] for c, x in cols.items()}
    # phases renumbered in the order their first message started
    _, first = np.unique(cols["phase"], return_index=True)
    met = np.argsort(first)
    renumber = np.empty(len(phases), np.int32)
    renumber[met] = np.arange(len(phases), dtype=np.int32)
    cols["phase"] = renumber[cols["phase"]]
    return cols, [phases[i] for i in met]


def _bursts(cols: dict[str, np.ndarray], routes: _Routes, topologies: Sequence[Topology], scenario: Scenario,
            unit: float) -> dict[str, Any]:
    """Per message: its route, size and phase, and its interval [b, end) at the sender in integer time units
    (steps 1-3 of the module doc), its fluid transmission [ts, tx) and mean rate (bit/s); the routes' and sizes'
    columns. Integers keep "a burst ends as the next one of its sender begins" exact."""
    n_nodes = len(routes.topology.nodes)
    pairs, rid = np.unique((cols["state"] * n_nodes + cols["src"]) * n_nodes + cols["dst"], return_inverse=True)
    nodes = routes.topology.nodes
    for code in pairs.tolist():
        routes.add(nodes[code // n_nodes % n_nodes], nodes[code % n_nodes], topologies[code // (n_nodes * n_nodes)])
    del pairs
    r = routes.columns()
    sizes, sid = np.unique(cols["payload_bits"], return_inverse=True)
    k, burst, first_bits, whole = _first_windows(sizes, scenario)
    d = np.rint(burst[sid] / r["c0"][r["shape_row"][rid]] / unit).astype(np.int64)
    t = np.rint(cols["t_start"] / unit).astype(np.int64)
    b = np.empty_like(t)
    ts, tx = t, np.rint(cols["t_tx"] / unit).astype(np.int64)
    dur = cols["t_tx"] - cols["t_start"]
    rate = np.divide(8.0 * cols["wire_bytes"], dur, out=np.full(len(dur), np.inf), where=dur > 0)  # inf: no time
    src = cols["src"]
    by_sender = np.argsort(src, kind="stable")  # each sender's messages in send order
    for idx in np.split(by_sender, np.flatnonzero(np.diff(src[by_sender])) + 1):
        # b_m = max(t_m, b_(m-1) + d_(m-1)) = S_m + max over j <= m of (t_j - S_j), S_m = sum of d before m
        dd = d[idx]
        s = np.cumsum(dd) - dd
        b[idx] = s + np.maximum.accumulate(t[idx] - s)
    del by_sender
    end = b + d
    del d
    end = np.where(whole[sid], end, np.maximum(end, tx))
    return {"rid": rid.astype(np.int32), "sid": sid.astype(np.int32), "phase": cols["phase"].astype(np.int32),
            "b": b, "end": end, "ts": ts, "tx": tx, "rate": rate, "routes": r, "k": k, "first_bits": first_bits}


def _visits(msg: dict[str, Any], n_ph: int, unit: float, ports: np.ndarray, fluid: bool = False
            ) -> dict[str, np.ndarray]:
    """Per message and hop of its route (step 4) into one of the `ports` (a mask; the others are left out): key
    (port and phase), ingress group (ingress and phase), ingress capacity, packets, and the interval [t0, t1) at
    the port: its burst's, or with `fluid` its fluid transmission's, then also its rate ("w", x _RATE of the
    port's capacity, at most _RATE). Built in chunks of messages, so that only the hops kept take memory."""
    r = msg["routes"]
    n_ing = int(r["ing"].max()) + 1
    parts: list[dict[str, np.ndarray]] = []
    for a in range(0, len(msg["rid"]), _CHUNK):
        rid = msg["rid"][a:a + _CHUNK]
        length = r["length"][rid]
        which = np.repeat(np.arange(a, a + len(rid), dtype=np.int64), length)
        j = np.arange(len(which), dtype=np.int64) - np.repeat(np.cumsum(length) - length, length)  # hop index
        row = r["first"][rid][which - a] + j
        keep = ports[r["port"][row]]
        which, j, row = which[keep], j[keep], row[keep]
        srow = r["shape_row"][msg["rid"][which]] + j
        sid = msg["sid"][which]
        off = np.rint((r["lat"][srow] + msg["first_bits"][sid] * r["sf"][srow]) / unit).astype(np.int64)
        phase = msg["phase"][which]
        port = r["port"][row].astype(np.int64)
        t0, t1 = (msg["ts"], msg["tx"]) if fluid else (msg["b"], msg["end"])
        parts.append({"key": port * n_ph + phase, "grp": (port * n_ing + r["ing"][row]) * n_ph + phase,
                      "ratio": r["ratio"][row], "pk": msg["k"][sid], "t0": t0[which] + off, "t1": t1[which] + off})
        if fluid:
            share = np.minimum(1.0, msg["rate"][which] / r["cap"][port])
            parts[-1]["w"] = np.rint(share * _RATE).astype(np.int64)
    return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]} if len(parts) > 1 else parts[0]


def _sweep(key: np.ndarray, grp: np.ndarray, t0: np.ndarray, t1: np.ndarray, weights: Sequence[np.ndarray],
           grp_weights: Sequence[np.ndarray]) -> tuple[Any, ...]:
    """The start and end events of the intervals [t0, t1) in sweep order (per key, then time, ends before starts),
    with the state after each: flows in flight and the sum of each of `weights` over them, groups in use (a group
    is in use from its first flow's start to its last one's end) and the sum of each of `grp_weights` over them.
    Cumulative sums restart at each key by themselves: every key's starts and ends cancel."""
    n = len(key)
    kind = np.repeat(np.array([1, 0], np.int8), n)  # 1 start, 0 end
    t = np.concatenate([t0, t1])
    d = kind.astype(np.int64) * 2 - 1
    eg = np.concatenate([grp, grp])
    o2 = np.lexsort((kind, t, eg))
    del eg
    count = np.cumsum(d[o2])
    joined = np.zeros(2 * n, np.int64)
    joined[o2[(kind[o2] == 1) & (count == 1)]] = 1
    joined[o2[(kind[o2] == 0) & (count == 0)]] = -1
    del o2, count
    ek = np.concatenate([key, key])
    order = np.lexsort((kind, t, ek))
    sums = [np.cumsum((d * np.concatenate([w, w]))[order]) for w in weights]
    gsums = [np.cumsum((joined * np.concatenate([w, w]))[order]) for w in grp_weights]
    return ek[order], kind[order], t[order], np.cumsum(d[order]), sums, np.cumsum(joined[order]), gsums


def _bounds(ks: np.ndarray) -> tuple[list[int], list[int]]:
    """The [first, last) event of each key of the sorted keys `ks`."""
    first = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    return first.tolist(), np.r_[first[1:], len(ks)].tolist()


class _Stations:
    """Per shared cell and phase, its stations transmitting over time (a step function from the cell sweep)."""

    def __init__(self, ks: np.ndarray, t: np.ndarray, stations: np.ndarray) -> None:
        self.ks, self.t, self.stations = ks, t, stations

    def at(self, key: int, t: int) -> int:
        """Stations transmitting from `t` on (after every event at `t`) on cell and phase `key`."""
        a, b = np.searchsorted(self.ks, key), np.searchsorted(self.ks, key, side="right")
        j = a + int(np.searchsorted(self.t[a:b], t, side="right")) - 1
        return int(self.stations[j]) if j >= a else 0


def _peaks(v: dict[str, np.ndarray], routes: _Routes, phases: list[str], unit: float,
           stations: _Stations) -> list[PortPeak]:
    """The `PortPeak` of each key of the visits `v` (whole keys only); an access point's on a shared cell with
    the stations transmitting at its worst moment (`stations`)."""
    ks, kind, t, flows, (packets,), ingresses, (capacity,) = _sweep(v["key"], v["grp"], v["t0"], v["t1"], (v["pk"],),
                                                                     (v["ratio"],))
    score = np.where((kind == 1) & (capacity > _SCALE), packets, -1)
    n_ph = len(phases)
    out = []
    for a, b in zip(*_bounds(ks)):
        key = int(ks[a])
        port = key // n_ph
        name, resource, node, buffer = routes.info[port]
        i = a + int(np.argmax(score[a:b]))
        hit = score[i] >= 0
        k = stations.at(routes.port_cell[port] * n_ph + key % n_ph, int(t[i])) if hit and routes.port_ap[port] else 0
        out.append(PortPeak(phases[key % n_ph], name, resource, node, buffer, int(flows[a:b].max()),
                            int(flows[i]) if hit else 0, int(packets[i]) if hit else 0,
                            int(ingresses[i]) if hit else 0, float(t[i]) * unit if hit else float("nan"),
                            routes.port_cap[port], k))
    return out


def _cells(v: dict[str, np.ndarray], routes: _Routes, phases: list[str], unit: float
           ) -> tuple[list[CellPeak], _Stations]:
    """The `CellPeak` of each shared cell and phase of the fluid visits `v` (module doc, "WiFi cells"), and its
    stations transmitting over time. Per cell and phase a transmitter (a port: the access point or a station) is
    a group of the sweep; the weights: the access point's flows, their rates, all rates; stations in use."""
    n_ph = len(phases)
    if not len(v["key"]):
        return [], _Stations(*(np.zeros(0, np.int64),) * 3)
    port, phase = v["key"] // n_ph, v["key"] % n_ph
    ap = np.asarray(routes.port_ap)[port]
    key = np.asarray(routes.port_cell, np.int64)[port] * n_ph + phase
    ks, kind, t, _, (apf, apw, load), _, (st,) = _sweep(key, v["key"], v["t0"], v["t1"],
                                                        (ap.astype(np.int64), v["w"] * ap, v["w"]),
                                                        ((~ap).astype(np.int64),))
    tr = st + (apf > 0)
    start = kind == 1
    if routes.station:  # shared per transmitter at C eta(k): only the relay of a crowded cell (module doc)
        relay = np.where(start & (apf > 0) & (st >= CONTENDERS), apw * (st + 1), -1)
        crowd = np.zeros_like(start)
    else:
        relay = np.where(start & (apf > 0) & (st > 0) & (apw * (st + 1) > _RATE), apw * (st + 1), -1)
        crowd = start & (tr >= CONTENDERS) & (load > CROWD_LOAD * _RATE)

    def moment(i: int) -> CellMoment:
        return CellMoment(int(apf[i]), int(st[i]), int(apw[i]) / _RATE, int(load[i]) / _RATE, float(t[i]) * unit)

    out = []
    for a, b in zip(*_bounds(ks)):
        c = int(ks[a]) // n_ph
        i = a + int(np.argmax(relay[a:b]))
        cand = a + np.flatnonzero(crowd[a:b])
        j = int(cand[np.lexsort((cand, -load[cand], -tr[cand]))[0]]) if len(cand) else -1
        out.append(CellPeak(phases[int(ks[a]) % n_ph], *routes.cells[c], int(tr[a:b].max()),
                            moment(i) if relay[i] >= 0 else None, moment(j) if j >= 0 else None))
    return out, _Stations(ks, t, st)


def _analyse(messages: pl.DataFrame, topology: Topology, scenario: Scenario) -> tuple[list[PortPeak],
                                                                                      list[CellPeak]]:
    """`port_peaks` and `cell_peaks` of one trace, from one pass over it."""
    messages = messages.filter(pl.col("t_start").is_not_nan()).with_columns(
        pl.when(pl.col("t_tx").is_nan()).then(pl.col("t_start")).otherwise(pl.col("t_tx")).alias("t_tx"))
    if not messages.height:
        return [], []
    state, topologies = routing_states(messages, topology)
    cols, phases = _codes(messages, topology, state)
    unit = _PS if float(cols["t_tx"].max()) < _PS_UP_TO_S else _NS
    routes = _Routes(topology, scenario)
    msg = _bursts(cols, routes, topologies, scenario, unit)
    del cols
    cells, stations = _cells(_nonempty(_visits(msg, len(phases), unit, msg["routes"]["cell"] >= 0, fluid=True)),
                             routes, phases, unit)
    v = _nonempty(_visits(msg, len(phases), unit, msg["routes"]["can"]))
    del msg
    order = np.argsort(v["key"], kind="stable")
    keys = v["key"][order]
    out: list[PortPeak] = []
    a = 0
    while a < len(order):  # whole keys in batches of about _BATCH visits: the sweep's memory stays bounded
        z = min(a + _BATCH, len(order))
        z = int(np.searchsorted(keys, keys[z - 1], side="right"))
        sel = order[a:z]
        out += _peaks({c: x[sel] for c, x in v.items()}, routes, phases, unit, stations)
        a = z
    rank = {p: i for i, p in enumerate(phases)}
    out.sort(key=lambda p: (rank[p.phase], routes.ports[(p.resource, p.node)]))
    met = {name: i for i, (name, _, _) in enumerate(routes.cells)}
    cells.sort(key=lambda c: (rank[c.phase], met[c.cell]))
    return out, cells


def _nonempty(v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The visits `v` that occupy their port for some time (an empty message, 0 wire bits, occupies none)."""
    keep = v["t1"] > v["t0"]
    return {c: x[keep] for c, x in v.items()}


def port_peaks(messages: pl.DataFrame, topology: Topology, scenario: Scenario) -> list[PortPeak]:
    """Every port a message crossed where flows can converge (its ingresses together faster than it), per phase
    (phases in the order their first message started, then ports in the order met): the most flows in flight
    through it and its worst converging moment (module doc). A lost message counts from its start (if it started);
    its unknown transmission end is taken as its start."""
    return _analyse(messages, topology, scenario)[0]


def cell_peaks(messages: pl.DataFrame, topology: Topology, scenario: Scenario) -> list[CellPeak]:
    """Every shared cell a message crossed, per phase (phases as in `port_peaks`, then cells in the scenario's
    order): its worst relay and crowd moments (module doc, "WiFi cells"). A lost message is left out."""
    return _analyse(messages, topology, scenario)[1]


def _worst_ports(peaks: Sequence[PortPeak], iw: int) -> list[Incast]:
    """Per phase where some port overflows, its worst port (most packets per buffer slot, then most packets, then
    most flows, then the earliest moment, then the first met)."""
    worst: dict[str, tuple[PortPeak, int]] = {}
    for p in peaks:
        if not p.overflows:
            continue
        if p.phase not in worst:
            worst[p.phase] = (p, 1)
            continue
        w, n = worst[p.phase]
        better = (p.packets * w.buffer, p.packets, p.flows, -p.at_s) > (w.packets * p.buffer, w.packets, w.flows,
                                                                         -w.at_s)
        worst[p.phase] = (p if better else w, n + 1)
    return [Incast(p.phase, p.port, p.resource, p.node, p.flows, p.packets, p.ingresses, p.buffer, iw, p.at_s, n,
                   p.capacity_bps, p.contending) for p, n in worst.values()]


def _worst_cells(peaks: Sequence[CellPeak], access: str = "flow") -> list[Contention]:
    """Per phase where some cell is flagged, its worst: a relay before a crowd, a relay by the multiple of one
    transmitter's share the access point gets, a crowd by its transmitters, then its load; then the earliest, then
    the first met."""
    worst: dict[str, list[tuple[tuple[float, ...], Contention]]] = {}
    for c in peaks:
        m = c.relay or c.crowd
        if m is None:
            continue
        kind = "relay" if c.relay else "crowd"
        rank = (1, m.ap_share * (m.stations + 1), 0) if c.relay else (0, m.transmitters, m.load)
        worst.setdefault(c.phase, []).append((
            (*rank, -m.at_s), Contention(c.phase, kind, c.cell, c.ap, c.capacity_bps, m.flows, m.stations,
                                         m.ap_share, m.load, m.at_s, 0, access)))
    return [dataclasses.replace(max(found, key=lambda x: x[0])[1], cells=len(found)) for found in worst.values()]


def fluid_findings(messages: pl.DataFrame, topology: Topology, scenario: Scenario
                   ) -> tuple[list[Incast], list[Contention]]:
    """`find_incast` and `find_contention` from one pass over the trace (what a run reports)."""
    if scenario.network.model != "fluid":
        return [], []
    ports, cells = _analyse(messages, topology, scenario)
    return (_worst_ports(ports, scenario.network.initial_window),
            _worst_cells(cells, scenario.network.cell_access))


def find_incast(messages: pl.DataFrame, topology: Topology, scenario: Scenario) -> list[Incast]:
    """Per phase where some port overflows (module doc): its worst port (most packets per buffer slot, then most
    packets, then most flows, then the earliest moment, then the first met). Empty when the fluid model's times
    need no warning. The check is about the fluid model: a run on another backend (`network.model`) gets none."""
    return fluid_findings(messages, topology, scenario)[0]


def find_contention(messages: pl.DataFrame, topology: Topology, scenario: Scenario) -> list[Contention]:
    """Per phase where some shared cell is flagged (module doc, "WiFi cells"): its worst cell. Empty when the
    fluid model's cells need no warning, and for a run on another backend (`network.model`)."""
    return fluid_findings(messages, topology, scenario)[1]


def warn_incast(found: Sequence[Incast | Contention], stream: TextIO | None = None) -> None:
    """One line per finding on `stream` (default stderr): "simfl: warning: <phase>: the fluid model is ..."."""
    for w in found:
        print(f"simfl: warning: {w.message}", file=stream or sys.stderr, flush=True)
