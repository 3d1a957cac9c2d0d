"""Where the fluid model is optimistic: many TCP flows converging on one switch port at once (incast).

The fluid network (`simfl.network`) has no finite buffers: any number of flows share a port fairly and none loses a
packet. A packet network does not. Each new TCP transfer starts with a burst of its initial window (IW segments);
when more bursts converge on one output port than its drop-tail queue holds, the port drops packets, and a
transfer of a few packets cannot fast-retransmit: it waits for a retransmission timeout (at least 200 ms on Linux).
Measured in ns-3 for phase I's all-pairs exchange of 90 clients on one switch, that makes the exchange 10x slower
than the fluid model. This module finds such moments in a finished run's messages trace, per phase and port.

The check, for every message of the trace (route from the topology):

1. **Its first window.** k = min(IW, its packets) packets (`network.initial_window`), the first k packets of its
   `simfl.messages.packetize` split.
2. **When it leaves the sender.** A sender's network card emits its bursts one after another, in the order they were
   sent (`t_start`, then message ID): the burst starts at b = max(t_start, the end of the sender's previous burst)
   and takes (its wire bits) / (the sender's first-hop capacity). This is where the send order (`simfl.order`)
   shows: in the fluid model all of a client's messages go out at once.
3. **How long it is in flight.** A message of at most IW packets is all in its burst: [b, end of the burst). A
   longer one stays window-limited until its fluid transmission ends: [b, max(end of burst, t_tx)).
4. **At each port of its route**, that interval shifted by the hop's offset (`simfl.network.pipeline_offsets`:
   latency and store-and-forward of the hops before it). A port is the output queue of one link direction, or one
   transmitter's queue on a cell; its ingress is the link direction (or cell) the message arrived on, or the
   sending node itself at the first hop.

Per port and phase a sweep over the intervals' start and end events finds the moment when the concurrent flows'
first windows add up to the most packets while they **converge**: they arrive over ingresses that together can
deliver faster than the port sends (two or more ingresses of the port's speed; one faster link into a slower port
also converges; the sending node counts at the port's speed, so a node's own flows alone never do). When those
packets exceed the port's buffer (`buffer` of the link or cell, else `network.buffer`) the run is flagged for that
phase: the fluid times there are optimistic. Ends sort before starts at the same instant (a burst that ends as the
next begins does not overlap it). Everything is vectorised: O(M log M) for M messages.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np
import polars as pl

from simfl.config import Scenario
from simfl.messages import packetize
from simfl.network import pipeline_offsets
from simfl.topology import Hop, Topology

__all__ = ["PortPeak", "Incast", "port_peaks", "find_incast", "warn_incast"]

_LOCAL = "(sender)"  # the ingress of a route's first hop: the sending node itself
_SCALE = 1 << 30  # ingress capacities in units of the port's capacity / _SCALE (exact integer sums)


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
    packets: int  # their first windows, in packets
    ingresses: int  # the ingresses they arrived over
    t: float  # when that moment begins (simulated s)

    @property
    def overflows(self) -> bool:
        return self.packets > self.buffer


@dataclass(frozen=True)
class Incast:
    """The worst overflowing port of one phase (`ports`: how many ports of the phase overflow)."""

    phase: str
    port: str
    resource: str
    node: str
    flows: int
    packets: int
    ingresses: int
    buffer: int
    initial_window: int
    t: float
    ports: int

    @property
    def message(self) -> str:
        return (f"{self.phase}: the fluid model is optimistic here ({self.flows} concurrent flows into port "
                f"{self.port}, buffer {self.buffer} packets, initial window {self.initial_window}): rerun with "
                f'network.model = "ns3" for packet-level timing')

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "message": self.message}


class _Routes:
    """The ports (output queues) and ingresses of the routes, numbered as they are met, and each route's hops as
    consecutive rows of flat columns: port, ingress, ingress capacity (x _SCALE of the port's), and the hop's
    offset terms (latency, store-and-forward per bit of the first packet)."""

    def __init__(self, topology: Topology, scenario: Scenario) -> None:
        self.topology = topology
        default = scenario.network.buffer
        self.buffer_of = {ln.name: ln.buffer or default for ln in scenario.links}
        self.buffer_of.update({c.name: c.buffer or default for c in scenario.cells})
        self.ports: dict[tuple[str, str], int] = {}
        self.info: list[tuple[str, str, str, int]] = []  # port name, resource, node, buffer
        self.ingresses: dict[tuple[int, str], int] = {}
        self.ids: dict[tuple[str, str], int] = {}
        self.first: list[int] = []  # route -> its first row
        self.length: list[int] = []  # route -> hops
        self.capacity: list[float] = []  # route -> its first hop's capacity (the sender's card)
        self.rows: tuple[list[Any], ...] = ([], [], [], [], [])
        self._offsets: dict[tuple[tuple[float, float], ...], tuple[list[float], list[float]]] = {}

    def route(self, src: str, dst: str) -> int:
        r = self.ids.get((src, dst))
        return self._add(src, dst) if r is None else r

    def _hop(self, prev: Hop | None, h: Hop) -> tuple[int, int, int]:
        """(port, ingress, ingress capacity x _SCALE of the port's) of hop h, entered from hop `prev`."""
        key = (h.resource, h.src)
        p = self.ports.get(key)
        if p is None:
            p = self.ports[key] = len(self.info)
            name = f"{h.src}>{h.dst} (link {h.link})" if h.medium == "p2p" else f"{h.src} on cell {h.link}"
            self.info.append((name, h.resource, h.src, self.buffer_of.get(h.link, 0)))
        if prev is None:
            src, ratio = _LOCAL, _SCALE
        else:  # a faster ingress than 2x the port changes nothing
            src, ratio = prev.resource, min(2 * _SCALE, int(prev.capacity_bps / h.capacity_bps * _SCALE))
        ing = self.ingresses.get((p, src))
        if ing is None:
            ing = self.ingresses[(p, src)] = len(self.ingresses)
        return p, ing, ratio

    def _add(self, src: str, dst: str) -> int:
        hops = self.topology.route_tuple(src, dst)
        shape = tuple([(h.capacity_bps, h.latency_s) for h in hops])
        offsets = self._offsets.get(shape)
        if offsets is None:
            offsets = self._offsets[shape] = pipeline_offsets(hops)
        r = self.ids[(src, dst)] = len(self.first)
        port, ing, ratio, lat, sf = self.rows
        self.first.append(len(port))
        self.length.append(len(hops))
        self.capacity.append(hops[0].capacity_bps)
        prev = None
        for h in hops:
            p, i, q = self._hop(prev, h)
            port.append(p)
            ing.append(i)
            ratio.append(q)
            prev = h
        lat += offsets[0][:len(hops)]
        sf += offsets[1][:len(hops)]
        return r


def _first_window(bits: int, scenario: Scenario) -> tuple[int, float, float, bool]:
    """(packets, wire bits) of a message's first window, its first packet's wire bits, and whether the window
    holds the whole message."""
    net = scenario.network
    pk = packetize(bits, net.mtu, net.ip_header_bytes, net.link_header_bytes, net.headers)
    k = min(net.initial_window, pk.n_packets)
    whole = k == pk.n_packets
    burst = 8 * (pk.wire_bytes if whole else k * pk.first_packet_bytes)
    return k, float(burst), 8.0 * pk.first_packet_bytes, whole


def _bursts(messages: pl.DataFrame, routes: _Routes, scenario: Scenario) -> tuple[list[Any], ...]:
    """Per message (in order of t_start, then msg_id): route, phase (numbered as met), first-window packets, wire
    bits of its first packet, and its interval at the sender (steps 1-3 of the module doc); then the phases."""
    m = messages.sort(["t_start", "msg_id"])
    sizes: dict[int, tuple[int, float, float, bool]] = {}
    phases: dict[str, int] = {}
    busy_until: dict[str, float] = {}  # sender -> end of its last burst
    out: tuple[list[Any], ...] = ([], [], [], [], [], [])
    route_l, phase_l, pk_l, bits_l, b_l, end_l = out
    cols = (m[c].to_list() for c in ("src", "dst", "phase", "payload_bits", "t_start", "t_tx"))
    for src, dst, phase, bits, t_start, t_tx in zip(*cols):
        r = routes.route(src, dst)
        s = sizes.get(bits)
        if s is None:
            s = sizes[bits] = _first_window(bits, scenario)
        k, burst, first_bits, whole = s
        b = max(t_start, busy_until.get(src, t_start))
        e = busy_until[src] = b + burst / routes.capacity[r]
        route_l.append(r)
        phase_l.append(phases.setdefault(phase, len(phases)))
        pk_l.append(k)
        bits_l.append(first_bits)
        b_l.append(b)
        end_l.append(e if whole else max(e, t_tx))
    return (*out, list(phases))


def _intervals(messages: pl.DataFrame, routes: _Routes, scenario: Scenario) -> tuple[Any, ...]:
    """Per message and hop of its route (step 4): port, ingress, ingress capacity, phase, packets, start, end (numpy
    columns), and the phases."""
    *cols, phases = _bursts(messages, routes, scenario)
    rid, phase, pk = (np.asarray(c, np.int64) for c in cols[:3])
    first_bits, b, end = (np.asarray(c, np.float64) for c in cols[3:])
    length = np.asarray(routes.length, np.int64)[rid]
    msg = np.repeat(np.arange(len(rid)), length)
    row = np.repeat(np.asarray(routes.first, np.int64)[rid] - (np.cumsum(length) - length), length) \
        + np.arange(len(msg))
    port, ing, ratio = (np.asarray(c, np.int64)[row] for c in routes.rows[:3])
    lat, sf = (np.asarray(c, np.float64)[row] for c in routes.rows[3:])
    off = lat + first_bits[msg] * sf
    return port, ing, ratio, phase[msg], pk[msg], b[msg] + off, end[msg] + off, phases


def _sweep(key: np.ndarray, grp: np.ndarray, ratio: np.ndarray, pk: np.ndarray, t0: np.ndarray,
           t1: np.ndarray) -> tuple[np.ndarray, ...]:
    """The start and end events of the intervals in sweep order (per key, then time, ends before starts), with the
    state after each: flows in flight, their packets, ingresses in use and their capacity (x _SCALE of the port's).
    Cumulative sums restart at each key by themselves: every key's starts and ends cancel."""
    n = len(key)
    kind = np.concatenate([np.ones(n, np.int8), np.zeros(n, np.int8)])  # 1 start, 0 end
    t = np.concatenate([t0, t1])
    ek, eg = np.concatenate([key, key]), np.concatenate([grp, grp])
    d = np.where(kind == 1, 1, -1).astype(np.int64)
    # an ingress joins when its first flow starts and leaves when its last one ends (per port and phase)
    o2 = np.lexsort((kind, t, eg))
    count = np.cumsum(d[o2])
    up = o2[(kind[o2] == 1) & (count == 1)]
    down = o2[(kind[o2] == 0) & (count == 0)]
    joined = np.zeros(2 * n, np.int64)
    joined[up], joined[down] = 1, -1
    r = np.concatenate([ratio, ratio])
    order = np.lexsort((kind, t, ek))
    flows = np.cumsum(d[order])
    packets = np.cumsum((d * np.concatenate([pk, pk]))[order])
    ingresses = np.cumsum(joined[order])
    capacity = np.cumsum((joined * r)[order])
    return ek[order], kind[order], t[order], flows, packets, ingresses, capacity


def port_peaks(messages: pl.DataFrame, topology: Topology, scenario: Scenario) -> list[PortPeak]:
    """Every port a message crossed, per phase (phases in the order their first message started, then ports in
    the order met): the most flows in flight through it and its worst converging moment (module doc)."""
    routes = _Routes(topology, scenario)
    port, ing, ratio, phase, pk, t0, t1, phases = _intervals(messages, routes, scenario)
    keep = t1 > t0  # an empty message (0 wire bits, no headers) occupies no port
    if not keep.any():
        return []
    n_ph = len(phases)
    ks, kind, t, flows, packets, ingresses, capacity = _sweep(
        (port * n_ph + phase)[keep], (ing * n_ph + phase)[keep], ratio[keep], pk[keep], t0[keep], t1[keep])
    score = np.where((kind == 1) & (capacity > _SCALE), packets, -1)
    first = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    last = np.r_[first[1:], len(ks)]
    most = np.maximum.reduceat(flows, first)
    out = []
    for g, (a, b) in enumerate(zip(first.tolist(), last.tolist())):
        key = int(ks[a])
        name, resource, node, buffer = routes.info[key // n_ph]
        i = a + int(np.argmax(score[a:b]))
        hit = score[i] >= 0
        out.append(PortPeak(phases[key % n_ph], name, resource, node, buffer, int(most[g]),
                            int(flows[i]) if hit else 0, int(packets[i]) if hit else 0,
                            int(ingresses[i]) if hit else 0, float(t[i]) if hit else float("nan")))
    rank = {p: i for i, p in enumerate(phases)}
    out.sort(key=lambda p: rank[p.phase])  # stable: ports stay in the order met
    return out


def find_incast(messages: pl.DataFrame, topology: Topology, scenario: Scenario) -> list[Incast]:
    """Per phase where some port overflows (module doc): its worst port (most packets per buffer slot, then most
    packets, then most flows, then the first met). Empty when the fluid model's times need no warning."""
    worst: dict[str, tuple[PortPeak, int]] = {}
    for p in port_peaks(messages, topology, scenario):
        if not p.overflows:
            continue
        if p.phase not in worst:
            worst[p.phase] = (p, 1)
            continue
        w, n = worst[p.phase]
        better = (p.packets * w.buffer, p.packets, p.flows) > (w.packets * p.buffer, w.packets, w.flows)
        worst[p.phase] = (p if better else w, n + 1)
    iw = scenario.network.initial_window
    return [Incast(p.phase, p.port, p.resource, p.node, p.flows, p.packets, p.ingresses, p.buffer, iw, p.t, n)
            for p, n in worst.values()]


def warn_incast(found: Sequence[Incast], stream: TextIO | None = None) -> None:
    """One line per phase on `stream` (default stderr): "simfl: warning: <phase>: the fluid model is ..."."""
    for w in found:
        print(f"simfl: warning: {w.message}", file=stream or sys.stderr, flush=True)
