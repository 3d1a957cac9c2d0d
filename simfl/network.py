"""SimPy network: fluid fair sharing per link direction and per shared cell, FIFO per flow, pipelined multi-hop.

The model (what every simulated time in a trace means)
-----------------------------------------------------
Resources. Each direction of a point-to-point link is a resource of capacity C (its bandwidth, bit/s); each shared
cell (WiFi) is one resource for all of its station<->AP hops in both directions.

Flows and FIFO. The messages from one node to another form a flow. A flow transmits one message at a time, in the
order of `send` calls: a message waits in its flow's FIFO queue until the previous one has finished transmitting
(`t_start`). Different flows share every resource on their routes fairly. (So a link direction is FIFO per flow and
fairly shared between flows, as TCP connections share a link.)

Max-min fair share. A transmitting message occupies each resource of its route once per hop that uses it (a message
between two stations of one cell crosses the cell twice: m_r(f) = 2). The rates R_f are max-min fair: no resource
carries more than its capacity (sum over f of m_r(f) R_f <= C_r) and every flow is bottlenecked, i.e. some resource
on its route is saturated and no flow on it runs faster. They are computed by progressive filling: all rates rise
together; a resource saturates at the level (C_r - load of its fixed flows) / (occupancies of its unfixed flows);
the first resource to saturate fixes its unfixed flows at that level; repeat until every flow is fixed. Capacity a
flow cannot use because it is bottlenecked elsewhere goes to the others (a on a 10 Mbps uplink and b on a 100 Mbps
uplink both sending to c's 100 Mbps downlink get 10 and 90 Mbps). For symmetric patterns (all-pairs, gather and
broadcast on a star or a cell) this is the equal split R = min over hops of C_r / n_r.

Rates change only when a transmission starts or ends, and then only for the flows of the connected component of
the resources it uses (resources linked by the flows that cross them; every other flow's rate stays max-min fair),
so the event count is proportional to messages, not packets.

Delivery time. A message of W wire bits (`simfl.messages.packetize`: payload bytes plus per-packet headers)
transmits from t_start until t_tx, when the integral of R(t) reaches W (both are in the trace). Its last bit is
delivered at

    t_deliver = t_tx + sum_h L_h + P * (sum_h 1 / C_h  -  1 / min_h C_h)

with L_h each hop's latency, C_h its nominal capacity and P the wire bits of the message's first (largest) packet:
store-and-forward pipelining, where every hop but the slowest adds one packet's serialisation (for hops of equal
capacity: every hop after the first); `route_terms` gives L and S of a route, `pipeline_offsets` for each hop of it.
Messages of one flow are delivered in order: a message is never delivered before the previous message of its flow
(a short message behind a long one waits for it; then t_deliver exceeds the formula).

Alone on its path (R = min_h C_h = C_b) this is the closed form

    t_deliver = t_start + sum_h L_h + W / C_b + P * (sum_h 1 / C_h - 1 / C_b)

e.g. one hop: t_start + L + W / C; k equal messages started together on one link: t_start + L + k W / C.

Implementation: rates change lazily (a flow's remaining bits are settled only when its rate changes); finish times
sit in a heap; all starts and ends of one simulated instant are handled in one batch by an event of lower priority
than SimPy's normal events, so a burst of sends (e.g. 999,000 all-pairs messages) costs one rate computation.
The inboxes live in `simfl.mailbox`, the per-link counters and the links table in `simfl.linkstats`.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence
from typing import Any

import simpy
from simpy.events import Event

from simfl.config import NetworkParams
from simfl.errors import SimflError
from simfl.linkstats import LinkStats
from simfl.mailbox import Mailboxes
from simfl.messages import Message, packetize
from simfl.topology import Hop, Resource, Topology
from simfl.trace import TraceRecorder

__all__ = ["Network", "pipeline_offsets", "route_terms"]

_WAKE_PRIORITY = 2  # after simpy's URGENT (0) and NORMAL (1): runs when all activity of the instant is done
_TOL = 1e-12  # relative tolerance on finish times: completions this close are handled together
_PACKETS_CACHE = 4096  # payload sizes whose packetisation Network.send keeps (runs send a handful of sizes)


def route_terms(hops: Sequence[Hop]) -> tuple[float, float]:
    """(L, S) of a route: its summed latency L and its store-and-forward term S = sum_h 1/C_h - max_h 1/C_h
    (seconds per bit). A message whose transmission ends at t_tx, first packet P bits, is delivered at
    t_tx + L + P * S (or with the previous message of its flow, if that is later)."""
    latency = inv_sum = inv_max = 0.0
    for h in hops:
        latency += h.latency_s
        inv = 1.0 / h.capacity_bps
        inv_sum += inv
        if inv > inv_max:
            inv_max = inv
    return latency, inv_sum - inv_max


def pipeline_offsets(hops: Sequence[Hop]) -> tuple[list[float], list[float]]:
    """`route_terms` along a route of H hops: (lat, sf), H + 1 entries each.

    lat[j] is the latency of hops 0..j-1 and sf[j] the S of hops 0..j: a packet of P bits that the sender starts
    at t starts crossing hop j at t + lat[j] + P * sf[j] (every hop before j but the slowest adds its
    serialisation). Entry H is the route's (L, S), the delivery term."""
    h = len(hops)
    lat = [route_terms(hops[:j])[0] for j in range(h + 1)]
    sf = [route_terms(hops[:j + 1])[1] for j in range(h)]
    return lat, sf + [sf[-1] if sf else 0.0]


class _Wake(Event):
    """A self-triggering event at `delay` with a low priority (the pattern of simpy's own Timeout)."""

    def __init__(self, env: simpy.Environment, delay: float, callback: Any) -> None:
        self.env = env
        self.callbacks = [callback]
        self._value = None
        self._ok = True
        env.schedule(self, _WAKE_PRIORITY, delay)


class _Res:
    __slots__ = ("spec", "idx", "capacity", "n", "flows", "mark", "wf_load", "wf_m", "wf_key")

    def __init__(self, spec: Resource, idx: int) -> None:
        self.spec = spec
        self.idx = idx  # index in the topology's resources (and in LinkStats)
        self.capacity = spec.capacity_bps
        self.n = 0  # active occupancies
        self.flows: dict[_Flow, int] = {}  # active flow -> occupancies (insertion-ordered: deterministic)
        self.mark = 0  # component search stamp (see Network._rates)
        self.wf_load = 0.0  # water-filling: load of the flows fixed so far
        self.wf_m = 0  # water-filling: occupancies of the flows not fixed yet
        self.wf_key = 0.0  # water-filling: the level at which this resource saturates


class _Tx:
    __slots__ = ("msg_id", "kind", "phase", "round", "payload_bits", "wire_bytes", "n_packets", "packet_bits",
                 "t_send", "t_start", "t_tx", "payload", "event", "flow")

    def __init__(self, msg_id: int, kind: str, phase: str, rnd: int, payload_bits: int, wire_bytes: int,
                 n_packets: int, packet_bits: int, t_send: float, payload: Any, event: Event, flow: _Flow) -> None:
        self.msg_id = msg_id
        self.kind = kind
        self.phase = phase
        self.round = rnd
        self.payload_bits = payload_bits
        self.wire_bytes = wire_bytes
        self.n_packets = n_packets
        self.packet_bits = packet_bits
        self.t_send = t_send
        self.t_start = t_send
        self.t_tx = t_send
        self.payload = payload
        self.event = event
        self.flow = flow


class _Flow:
    __slots__ = ("id", "src", "dst", "res", "n_hops", "latency", "sf_per_bit", "queue", "cur", "remaining",
                 "rate", "t_last", "version", "last_deliver", "mark", "new_rate")

    def __init__(self, fid: int, src: str, dst: str, res: tuple[tuple[_Res, int], ...], n_hops: int,
                 latency: float, sf_per_bit: float) -> None:
        self.id = fid
        self.src = src
        self.dst = dst
        self.res = res
        self.n_hops = n_hops
        self.latency = latency
        self.sf_per_bit = sf_per_bit
        self.queue: deque[_Tx] | None = None  # created on first use (a million idle deques cost 600 MB)
        self.cur: _Tx | None = None
        self.remaining = 0.0
        self.rate = 0.0
        self.t_last = 0.0
        self.version = 0
        self.last_deliver = 0.0
        self.mark = 0
        self.new_rate = 0.0


class Network:
    """Messages over the topology's links. See the module docstring for the exact timing model."""

    def __init__(self, env: simpy.Environment, topology: Topology, params: NetworkParams | None = None,
                 recorder: TraceRecorder | None = None) -> None:
        self.env = env
        self.topology = topology
        self.params = params or NetworkParams()
        self.recorder = recorder if recorder is not None else TraceRecorder()
        self.recorder.set_link_source(self.link_columns)
        self.links = LinkStats(topology.resources)
        self.mailboxes = Mailboxes(env, topology.nodes)
        self._res = {r.id: _Res(r, i) for i, r in enumerate(topology.resources)}
        self._res_list = list(self._res.values())
        self._stamp = 0
        self._flows: dict[tuple[str, str], _Flow] = {}
        self._pending: list[_Flow] = []
        self._heap: list[tuple[float, int, int, _Flow]] = []
        self._wake_times: list[float] = []
        self._deliveries: list[tuple[float, int, _Tx]] = []
        self._packets: dict[int, tuple[int, int, int]] = {}  # payload bits -> (wire bytes, packets, first packet bits)
        self._next_id = 0
        self.sent = 0
        self.delivered = 0

    # ------------------------------------------------------------------ public API
    def send(self, src: str, dst: str, *, kind: str, phase: str, round: int, payload_bits: int,
             payload: Any = None) -> Event:
        """Queue a message; returns an event whose value is the delivered `Message` (also put in `inbox(dst)`)."""
        flow = self._flows.get((src, dst))
        if flow is None:
            flow = self._new_flow(src, dst)
        bits = int(payload_bits)
        pk = self._packets.get(bits)
        if pk is None:
            pk = self._packetize(src, dst, bits)
        env = self.env
        ev = Event(env)
        tx = _Tx(self._next_id, kind, phase, int(round), bits, pk[0], pk[1], pk[2], env.now, payload, ev, flow)
        self._next_id += 1
        self.sent += 1
        if flow.cur is None:
            flow.cur = tx
            flow.remaining = 8.0 * tx.wire_bytes
            self._pending.append(flow)
            self._wake(env.now)
        else:
            if flow.queue is None:
                flow.queue = deque()
            flow.queue.append(tx)
        return ev

    def inbox(self, node: str) -> simpy.FilterStore:
        """The store where messages to `node` are put on delivery (created on first use; see `simfl.mailbox`)."""
        return self.mailboxes.inbox(node)

    @property
    def keep_unclaimed(self) -> bool:
        """Keep messages delivered to an inbox nobody has asked for yet (False: drop them, to save memory)."""
        return self.mailboxes.keep_unclaimed

    @keep_unclaimed.setter
    def keep_unclaimed(self, keep: bool) -> None:
        self.mailboxes.keep_unclaimed = keep

    def route(self, src: str, dst: str):
        return self.topology.route(src, dst)

    @property
    def in_flight(self) -> int:
        return self.sent - self.delivered

    def totals(self) -> dict[str, Any]:
        rec = self.recorder
        return {
            "messages": self.delivered,
            "messages_undelivered": self.in_flight,
            "payload_bits": rec.payload_bits,
            "payload_bytes": rec.payload_bits / 8,
            "wire_bytes": rec.wire_bytes,
        }

    def link_columns(self) -> dict[str, list[Any]]:
        """The links table (see `simfl.trace.LINK_SCHEMA`) as columns, as of now."""
        return self.links.columns(self.env.now)

    # ------------------------------------------------------------------ internals
    def _packetize(self, src: str, dst: str, bits: int) -> tuple[int, int, int]:
        """(wire bytes, packets, first packet bits) of a payload, remembered per size for the next sends."""
        if bits < 0:
            raise ValueError(f"send {src}->{dst}: payload_bits must be >= 0, got {bits}")
        p = self.params
        pk = packetize(bits, p.mtu, p.ip_header_bytes, p.link_header_bytes, p.headers)
        if len(self._packets) >= _PACKETS_CACHE:
            self._packets.clear()
        out = self._packets[bits] = (pk.wire_bytes, pk.n_packets, 8 * pk.first_packet_bytes)
        return out

    def _new_flow(self, src: str, dst: str) -> _Flow:
        if src == dst:
            raise SimflError(f"send: source and destination are the same node ({src!r})")
        hops = self.topology.route_tuple(src, dst)
        counts: dict[str, int] = {}
        for h in hops:
            counts[h.resource] = counts.get(h.resource, 0) + 1
        res = tuple([(self._res[rid], m) for rid, m in counts.items()])
        latency, sf = route_terms(hops)
        flow = _Flow(len(self._flows), src, dst, res, len(hops), latency, sf)
        self._flows[(src, dst)] = flow
        return flow

    def _wake(self, t: float) -> None:
        wt = self._wake_times
        if wt and wt[0] <= t:
            return
        env = self.env
        delay = t - env.now
        heapq.heappush(wt, env.now + delay)  # the same float simpy computes for the event's time
        _Wake(env, delay, self._process)

    def _process(self, _event: Event) -> None:
        env = self.env
        now = env.now
        wt = self._wake_times
        while wt and wt[0] <= now:
            heapq.heappop(wt)
        heap = self._heap
        heappop, heappush = heapq.heappop, heapq.heappush
        lim = now + _TOL * (1.0 + now)
        while True:
            done: list[_Flow] = []
            while heap and heap[0][0] <= lim:
                _, _, version, f = heappop(heap)
                if version == f.version:
                    done.append(f)
            if not done and not self._pending:
                break
            dirty: dict[_Res, None] = {}
            for f in done:
                self._finish(f, now, dirty)
            pending = self._pending
            self._pending = []
            links = self.links
            for f in pending:
                for r, m in f.res:
                    if r.n == 0:
                        links.busy(r.idx, now)
                    r.n += m
                    r.flows[f] = m
                    dirty[r] = None
                f.cur.t_start = now
                f.t_last = now
                f.rate = 0.0
            for f in self._rates(dirty):
                rate = f.new_rate
                if rate != f.rate:
                    if f.rate:
                        rem = f.remaining - f.rate * (now - f.t_last)
                        f.remaining = rem if rem > 0.0 else 0.0
                    f.t_last = now
                    f.rate = rate
                    f.version += 1
                    heappush(heap, (now + f.remaining / rate, f.id, f.version, f))
        deliveries = self._deliveries
        while deliveries and deliveries[0][0] <= lim:
            self._deliver(heappop(deliveries)[2], now)
        while heap and heap[0][2] != heap[0][3].version:
            heappop(heap)
        if heap:
            self._wake(heap[0][0] if not deliveries or heap[0][0] < deliveries[0][0] else deliveries[0][0])
        elif deliveries:
            self._wake(deliveries[0][0])

    def _rates(self, dirty: dict[_Res, None]) -> list[_Flow]:
        """Max-min fair rates (in `new_rate`) for the flows connected to the `dirty` resources; returns those flows.

        Only the connected component of the changed resources (resources linked by the flows that cross them) can
        change; the rates of all other flows stay max-min fair. Progressive filling: every unfixed flow's rate
        rises at one level; a resource saturates at (C - load of its fixed flows) / (occupancies of its unfixed
        flows); the resource that saturates first fixes its unfixed flows at that level; repeat. A heap holds the
        saturation levels, which only rise as flows are fixed, so each is pushed again only when it changes.
        """
        self._stamp += 1
        stamp = self._stamp
        stack = []
        for r in dirty:
            r.mark = stamp
            stack.append(r)
        flows: list[_Flow] = []
        heap: list[tuple[float, int]] = []
        while stack:
            r = stack.pop()
            if not r.n:
                continue
            r.wf_load = 0.0
            r.wf_m = r.n
            r.wf_key = key = r.capacity / r.n
            heap.append((key, r.idx))
            for f in r.flows:
                if f.mark != stamp:
                    f.mark = stamp
                    f.new_rate = 0.0
                    flows.append(f)
                    for r2, _ in f.res:
                        if r2.mark != stamp:
                            r2.mark = stamp
                            stack.append(r2)
        heapq.heapify(heap)
        heappop, heappush = heapq.heappop, heapq.heappush
        res_list = self._res_list
        level = 0.0
        while heap:
            key, idx = heappop(heap)
            r = res_list[idx]
            if key != r.wf_key or not r.wf_m:
                continue  # superseded by a later entry, or all its flows are fixed
            if key > level:
                level = key
            touched: dict[_Res, None] = {}
            for f in r.flows:
                if not f.new_rate:
                    f.new_rate = level
                    for r2, m in f.res:
                        r2.wf_load += m * level
                        r2.wf_m -= m
                        touched[r2] = None
            for r2 in touched:
                if r2.wf_m:
                    key = (r2.capacity - r2.wf_load) / r2.wf_m
                    if key < level:  # rounding: a level never falls
                        key = level
                    if key != r2.wf_key:
                        r2.wf_key = key
                        heappush(heap, (key, r2.idx))
        return flows

    def _finish(self, f: _Flow, now: float, dirty: dict[_Res, None]) -> None:
        tx = f.cur
        tx.t_tx = now
        wire = tx.wire_bytes
        links = self.links
        for r, m in f.res:
            r.n -= m
            del r.flows[f]
            links.carried(r.idx, wire, m)
            if r.n == 0:
                links.idle(r.idx, now)
            dirty[r] = None
        f.rate = 0.0
        f.remaining = 0.0
        f.version += 1
        t = now + f.latency + tx.packet_bits * f.sf_per_bit
        if t < f.last_deliver:  # a short message behind a long one: keep the flow's delivery order
            t = f.last_deliver
        f.last_deliver = t
        heapq.heappush(self._deliveries, (t, tx.msg_id, tx))
        if f.queue:
            f.cur = f.queue.popleft()
            f.remaining = 8.0 * f.cur.wire_bytes
            self._pending.append(f)
        else:
            f.cur = None

    def _deliver(self, tx: _Tx, now: float) -> None:
        f = tx.flow
        msg = Message(tx.msg_id, f.src, f.dst, tx.kind, tx.phase, tx.round, tx.payload_bits, tx.wire_bytes,
                      tx.n_packets, f.n_hops, tx.t_send, tx.t_start, tx.t_tx, now, tx.payload)
        self.recorder.record_message(msg)
        self.delivered += 1
        tx.event.succeed(msg)
        self.mailboxes.put(msg)
