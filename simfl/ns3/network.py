"""`Ns3Network`: the packet-level backend, with the public API of `simfl.network.Network` (see `simfl.ns3`)."""

from __future__ import annotations

import atexit
import dataclasses
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import simpy
from simpy.events import Event

from simfl.config import Cell, Link, NetworkParams, Scenario
from simfl.errors import SimflError
from simfl.faults import Fault
from simfl.linkmodels import NO_LOSS, Loss
from simfl.mailbox import Mailboxes
from simfl.messages import DELIVERED, LOST, TO_CRASHED, Message, MessageLost, packetize
from simfl.network import Network, Stream, _Wake
from simfl.ns3 import cpp
from simfl.topology import Hop, Resource, Topology
from simfl.trace import LINK_SCHEMA, TraceRecorder

__all__ = ["Ns3Network", "Ns3Options", "HOST_QDISCS", "PCAP_DIR", "refuse_unsupported"]

PCAP_DIR = "ns3-pcap"  # the run folder's subfolder for ns-3's own pcap files (network.ns3_pcap)
HOST_KINDS = ("client", "server", "cloud")  # end hosts: a queue discipline; every other node forwards (drop-tail)
HOST_QDISCS = {"fifo": 1, "fq": 2, "fq_codel": 3}  # the hub's queue codes (see cpp.HUB_SOURCE, Hub::SetupQueue)
_HOST_QUEUE = {"fifo": 1000, "fq": 10240, "fq_codel": 10240}  # packets a host's queue discipline holds (ns-3's)
_PORT0 = 49152  # first source port of a node's connections
_UDP_PORT0 = 10000  # receiving port of the first datagram stream (the next ones follow; TCP listens on 5000)
_UDP_IP_HEADER = 28  # bytes of a UDP datagram's IP and UDP headers
_current: list[weakref.ref] = []  # the live Ns3Network (ns-3 has one simulator per process)
_ASSOCIATION_LIMIT = 10.0  # s of ns-3 time for WiFi stations to associate before the simulation starts
_JITTER_STREAMS = 1 << 20  # ns-3 random stream of device d's jitter: this + d (its loss model's: d)
_HORIZON = 3600.0  # s: with no SimPy event left, how long ns-3 may run without a completion (WiFi beacons never end)
_CHANGE_WINDOW = 10.0  # s: how far ahead of simulated time outage edges and capacity changes are put into ns-3
_GOODPUT_SHARE = 0.70  # TCP goodput / PHY rate of one station alone in an ns-3 802.11ac cell (measured, 80 MHz MCS 7)
_AIR_SPEEDUP = 1000  # a duplex cell's station links run this many times faster than its largest capacity
_CHANNEL_QUEUE = 4  # the hub's queue code of a duplex cell's channel port: fair queueing between flows (SetupQueue)
_AIR_SUBNET0 = 0x0A400000  # 10.64.0.0: the /30s of duplex cells' hidden links (links: 10.0/10; WiFi cells: 10.128/9)
# VHT (802.11ac): data subcarriers per channel width (MHz), and bits per subcarrier x coding rate of MCS 0-9
_VHT_SUBCARRIERS = {20: 52, 40: 108, 80: 234, 160: 468}
_VHT_MCS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 4.5, 5.0, 6.0, 8 * 5 / 6)


def vht_mode(goodput_bps: float, within: tuple[int, int] | None = None) -> tuple[int, int, int, float]:
    """(channel width MHz, spatial streams, MCS, PHY bit/s) of the 802.11ac mode (800 ns guard interval, 1-2
    streams) whose PHY rate is closest to goodput / _GOODPUT_SHARE; ties go to narrower channels, fewer streams.
    `within`: only the modes of this (width, streams) (a traced cell's MCS at a change)."""
    target = goodput_bps / _GOODPUT_SHARE
    best = None
    for width, nsd in _VHT_SUBCARRIERS.items():
        for nss in (1, 2):
            if within is not None and (width, nss) != within:
                continue
            for mcs, bits in enumerate(_VHT_MCS):
                if width == 20 and mcs == 9:
                    continue  # not a valid VHT mode for 1 or 2 streams
                rate = nsd * bits * nss / 4e-6
                key = (abs(rate - target) / target, width, nss, mcs)
                if best is None or key < best[0]:
                    best = (key, rate)
    (_, width, nss, mcs), rate = best
    return width, nss, mcs, rate


def _ns(t: float) -> int:
    return round(t * 1e9)


def _fluid_only(what: str, why: str) -> SimflError:
    return SimflError(f"{what}: {why}; the fluid model (network.model = \"fluid\") supports it")


def refuse_unsupported(params: NetworkParams) -> None:
    """A SimflError for the first network key that the ns3 backend cannot honour (see `simfl.ns3`)."""
    if not params.handshake:
        raise _fluid_only("network.handshake = false", "ns-3's TCP always opens a connection with a handshake")


def duplex_cells(topology: Topology) -> set[str]:
    """The cells with one channel per direction (their up channel's resource has src "*"): point-to-point in ns-3."""
    return {r.link for r in topology.resources if r.medium == "cell" and r.src == "*"}


def _ip(a: int) -> str:
    return ".".join(str((a >> k) & 255) for k in (24, 16, 8, 0))


@dataclass(frozen=True)
class Ns3Options:
    """The ns-3 knobs, read from the network parameters (`getattr(params, key, default)`)."""

    buffer_packets: int = 100  # drop-tail queue of each forwarding node's port (network.buffer), in packets
    min_rto: float = 0.2  # TCP minimum retransmission timeout, s (Linux: 200 ms; ns-3's default: 1 s)
    delayed_ack: float = 0.04  # TCP delayed-ACK timeout, s (Linux: 40 ms; ns-3's default: 200 ms)
    syn_timeout: float = 1.0  # TCP connection (SYN) retransmission timeout, s (Linux: 1 s; ns-3's default: 3 s)
    host_qdisc: str = "fq"  # end hosts' queue discipline: "fifo" | "fq" | "fq_codel"
    initial_window: int = 10  # TCP's initial congestion window, segments (Linux: 10)
    ns3_pcap: bool = False  # ns-3 writes a pcap file per link direction and per WiFi device (needs pcap_dir)

    def __post_init__(self) -> None:
        for k in ("buffer_packets", "initial_window"):
            b = getattr(self, k)
            if isinstance(b, bool) or not isinstance(b, int) or b < 1:
                raise SimflError(f"network.{k} = {b!r}: must be an integer >= 1 (packets)")
        for k in ("min_rto", "delayed_ack", "syn_timeout"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < math.inf:
                raise SimflError(f"network.{k} = {v!r}: must be a positive number of seconds")
        if self.host_qdisc not in HOST_QDISCS:
            raise SimflError(f"network.host_qdisc = {self.host_qdisc!r}: must be one of {', '.join(HOST_QDISCS)}")

    @classmethod
    def from_params(cls, params: Any) -> Ns3Options:
        """The options that `params` has (attributes of these names); the defaults for the others."""
        return cls(**{f.name: getattr(params, f.name) for f in dataclasses.fields(cls) if hasattr(params, f.name)})


class _Flow:
    __slots__ = ("src", "dst", "hops", "conn", "background", "datagram", "control")

    def __init__(self, src: str, dst: str, hops: tuple[Hop, ...], stream: Stream | None) -> None:
        self.src = src
        self.dst = dst
        self.hops = hops
        self.conn = -1  # its TCP connection, or for a datagram stream its UDP stream
        self.background = stream is not None  # a [[traffic]] stream's own flow: its frames go to no inbox
        self.datagram = stream is not None and stream.datagram  # UDP
        self.control = stream is not None and stream.control  # strict priority (IP ToS 0xb8, DSCP EF)


class _Tx:
    __slots__ = ("msg_id", "kind", "phase", "round", "payload_bits", "bytes", "t_send", "payload", "event", "flow")

    def __init__(self, msg_id: int, kind: str, phase: str, rnd: int, payload_bits: int, t_send: float,
                 payload: Any, event: Event, flow: _Flow) -> None:
        self.msg_id = msg_id
        self.kind = kind
        self.phase = phase
        self.round = rnd
        self.payload_bits = payload_bits
        self.bytes = (payload_bits + 7) // 8
        self.t_send = t_send
        self.payload = payload
        self.event = event
        self.flow = flow


def refuse_scenario(scenario: Scenario) -> None:
    """Everything of a scenario that the ns3 backend refuses, without building its network: `refuse_unsupported`
    (its links, cells and [[traffic]] all run)."""
    refuse_unsupported(scenario.network)


class Ns3Network:
    """Messages over the topology, simulated packet by packet by ns-3 (TCP/IP). See `simfl.ns3` for the model."""

    inbox = Network.inbox
    losses = Network.losses
    keep_unclaimed = Network.keep_unclaimed
    route = Network.route
    in_flight = Network.in_flight

    def __init__(self, env: simpy.Environment, topology: Topology, params: NetworkParams | None = None,
                 recorder: TraceRecorder | None = None, *, seed: int = 1, options: Ns3Options | None = None,
                 pcap_dir: str | Path | None = None, media: Sequence[Link | Cell] = (), priority: bool = False) -> None:
        self.env = env
        self.topology = topology
        self.params = params or NetworkParams()
        self.options = options or Ns3Options.from_params(self.params)
        self.media = {m.name: m for m in media}  # the scenario's links and cells: buffers, losses (default: none)
        refuse_unsupported(self.params)
        self.recorder = recorder if recorder is not None else TraceRecorder()
        self.recorder.set_link_source(self.link_columns)
        self.mailboxes = Mailboxes(env, topology.nodes)
        self.sent = 0
        self.delivered = 0
        self.retransmitted_bytes: dict[int, int] = {}  # msg_id -> retransmitted wire bytes (delivered or given up)
        self._flows: dict[tuple[str, ...], _Flow] = {}  # (src, dst), or (src, dst, stream) for background
        self._conns: dict[int, _Flow] = {}  # hub TCP connection -> its flow
        self._losses: dict[str, simpy.FilterStore] = {}  # node -> store of the lost messages to it (`losses`)
        self._txs: dict[int, _Tx] = {}
        self._outbox: list[_Tx] = []
        self._res_msgs = {r.id: 0 for r in topology.resources}
        self._pump_t: float | None = None
        self._token = 0
        self._closed = False
        self._final: tuple[dict[str, int], dict[str, list[Any]]] = ({}, {})  # drops and links table at close
        if self.params.ip_header_bytes < 40:
            raise SimflError(f"network.ip_header_bytes = {self.params.ip_header_bytes}: the ns3 backend sends real "
                             "TCP/IP headers (40 bytes); a smaller value would make segments exceed the MTU")
        mod = cpp.load(wifi=any(r.medium == "cell" and r.link not in duplex_cells(topology)
                                for r in topology.resources))
        for ref in _current:
            old = ref()
            if old is not None:
                old.close()
        _current[:] = [weakref.ref(self)]
        o = self.options
        mss = self.params.mtu - self.params.ip_header_bytes
        mod.Hub.Configure(mss, _ns(o.min_rto), _ns(o.delayed_ack), _ns(o.syn_timeout), o.initial_window,
                          int(seed) & 0xFFFFFFFF or 1, 1)
        self._hub = mod.Hub(self.params.header_bytes, mss)
        self._horizon = self._watch_give_up(mod)
        self._hub.prio = priority  # every point-to-point port: a strict-priority queue disc (control streams)
        self.pcap_dir = self._pcap_dir(pcap_dir)
        self._idx = {n: i for i, n in enumerate(topology.nodes)}
        self._dev: dict[tuple[str, str], int] = {}  # (link or cell name, node) -> hub device index
        self._addr: dict[int, int] = {}  # hub device index -> IPv4 address (int)
        self._res_devs: dict[str, list[int]] = {}  # resource id -> devices whose transmissions it carries
        self._rx: dict[str, int] = {}  # link direction's resource id -> the device that receives it
        self._routes: dict[tuple[str, int], int] = {}  # (node, destination address) -> device
        self._ports: dict[str, int] = {}
        self.cell_modes: dict[str, dict[str, Any]] = {}  # cell name -> the WiFi mode chosen for it
        self._cells: list[tuple[str, int, int]] = []  # (resource id, access point's device, stations)
        self._cell_devs: dict[int, tuple[int, tuple[int, int]]] = {}  # AP's device -> stations, (width, streams)
        self._ap_of: dict[str, str] = {}  # WiFi cell -> its access point
        self._duplex = duplex_cells(topology)
        self._air: dict[tuple[str, str, str], tuple[tuple[str, int, int], ...]] = {}  # see _add_duplex_cell
        self._air_rx: dict[tuple[str, str], tuple[int, int]] = {}  # (cell, station) -> its hidden receiving devices
        self._hidden: dict[str, list[int]] = {}  # duplex channel's resource id -> its hidden devices (drops)
        self._aliases: list[tuple[int, str]] = []  # (address, node) of interfaces not in _dev (the hosts file)
        self._t0_ns = 0
        self._n_air = 0  # hidden links of duplex cells made so far
        self._build()
        self._start()
        self._changes = self._timeline()  # [next time (s), what changes then]: outages and capacity traces
        self._reroutes = self._reroutable()  # some fault leaves another path: routes follow the faults
        self._down: frozenset[Any] = frozenset()  # the fault edges the installed routes avoid
        self._topo_now = topology  # the topology of what is up, as of the routes installed
        self._routed: list[list[Any]] = []  # with _reroutes: [flow, route back, source address, destination's]
        self._settled_t = 0.0  # when a message or frame was last delivered or lost
        self._planned = -1.0  # changes up to this simulated time are scheduled in ns-3
        self._plan(0.0)
        self._crashable = False  # allow_crashes was called
        self._crashed: set[str] = set()  # nodes that are down (`crash`): messages reaching them fail
        self._crashing: list[str] = []  # nodes crashed at this instant, whose connections the pump aborts

    @classmethod
    def for_scenario(cls, env: simpy.Environment, topology: Topology, scenario: Scenario,
                     recorder: TraceRecorder | None = None, *, options: Ns3Options | None = None,
                     pcap_dir: str | Path | None = None) -> Ns3Network:
        """The scenario's network in ns-3 (its seed, links and cells; strict-priority ports when a [[traffic]] flow
        has control priority); a SimflError for what ns-3 cannot honour (`refuse_unsupported`, in the
        constructor)."""
        return cls(env, topology, scenario.network, recorder, seed=scenario.seed, options=options,
                   pcap_dir=pcap_dir, media=(*scenario.links, *scenario.cells),
                   priority=any(t.priority == "control" for t in scenario.traffic))

    # ------------------------------------------------------------------ public API
    def send(self, src: str, dst: str, *, kind: str, phase: str, round: int, payload_bits: int,
             payload: Any = None, stream: Stream | None = None) -> Event:
        """Queue a message; returns an event whose value is the delivered `Message` (also put in `inbox(dst)`).
        With a `stream` (TCP, best effort), a background frame on that stream's own connection (in no inbox)."""
        self._check_open()
        key = (src, dst) if stream is None else (src, dst, stream.name)
        flow = self._flows.get(key)
        if flow is None:
            if stream is not None and stream.control and not self._hub.prio:
                raise SimflError(f"background flow {stream.name}: control priority needs an Ns3Network with "
                                 "priority=True (Ns3Network.for_scenario sets it for the scenario's control flows)")
            flow = self._new_flow(src, dst, key, stream)
        if stream is not None:
            self.recorder.background_sent += 1
        bits = int(payload_bits)
        if bits < 0:
            raise ValueError(f"send {src}->{dst}: payload_bits must be >= 0, got {payload_bits}")
        env = self.env
        ev = Event(env)
        tx = _Tx(self.sent, kind, phase, int(round), bits, env.now, payload, ev, flow)
        self._txs[tx.msg_id] = tx
        self._outbox.append(tx)
        self.sent += 1
        self._schedule(env.now)
        return ev

    def allow_crashes(self) -> None:
        """Prepare for `crash` (before the first send, as `Network.allow_crashes`)."""
        if self.sent:
            raise RuntimeError("allow_crashes: call it before the first send")
        self._crashable = True

    def crash(self, node: str) -> None:
        """`node` crashes now: at this instant's pump, its connections are aborted and their messages not yet
        delivered fail (status "lost"); those to it are left to their old connections, and a message that reaches it
        while it is down fails there (status "to_crashed") (see `simfl.ns3`)."""
        if not self._crashable:
            raise RuntimeError("crash: call allow_crashes before the first send")
        self._check_open()
        self._crashed.add(node)
        self._crashing.append(node)
        self._schedule(self.env.now)

    def recover(self, node: str) -> None:
        """`node` is up again: messages reaching it from now on are delivered (its next ones open connections)."""
        self._crashed.discard(node)

    def is_down(self, node: str) -> bool:
        return node in self._crashed

    def totals(self) -> dict[str, Any]:
        """`Network.totals`, plus retransmitted wire bytes and dropped packets."""
        return {**Network.totals(self), "retransmitted_bytes": sum(self.retransmitted_bytes.values()),
                "drops": sum(self.link_drops().values())}

    def link_drops(self) -> dict[str, int]:
        """Packets dropped so far per resource id: by a link direction's queue or its loss model (losses and
        outages: `loss`, `burst_loss`, [[faults]]); in a cell, the IP packets its
        members sent into it that neither arrived nor are still queued (queue discs, MAC queues; a frame in the air
        or in a block-ack reordering buffer counts as dropped until it arrives)."""
        if self._closed:
            return dict(self._final[0])
        hub = self._hub
        devs = hub.devs
        out = {rid: sum(int(devs[d].drops) for d in ds) for rid, ds in self._res_devs.items()}
        for rid, d in self._rx.items():
            out[rid] += int(hub.Lost(d))
        for rid, ds in self._hidden.items():  # a duplex cell's station links: queues, losses, outages
            out[rid] += sum(int(devs[d].drops) + int(hub.Lost(d)) for d in ds)
        if self._cells:  # ns-3 3.44 leaves some WiFi queue drops without a trace: count what went missing instead
            mod = cpp.load(wifi=True)
            for rid, d0, n in self._cells:
                sent = sum(int(devs[d].packets) - int(devs[d].received) for d in range(d0, d0 + n + 1))
                out[rid] = max(0, sent - int(mod.Queued(self._hub, d0, n)))
        return out

    def link_columns(self) -> dict[str, list[Any]]:
        """The links table (see `simfl.trace.LINK_SCHEMA`) as columns, as of now: `bytes` counts every packet a
        link direction (or a cell) transmitted, ACKs and retransmissions included, as IP bytes plus
        `link_header_bytes`; `busy_s` is their transmission time; `drops` (when the schema has it) the packets its
        queue dropped."""
        if self._closed:
            return {k: list(v) for k, v in self._final[1].items()}
        now = self.env.now
        devs = self._hub.devs
        drops = self.link_drops()
        cols: dict[str, list[Any]] = {k: [] for k in LINK_SCHEMA}
        for r in self.topology.resources:
            nbytes = sum(int(devs[d].bytes) for d in self._res_devs[r.id])
            row = {"link": r.link, "medium": r.medium, "src": r.src, "dst": r.dst, "capacity_bps": r.capacity_bps,
                   "latency_s": r.latency_s, "bytes": nbytes, "messages": self._res_msgs[r.id],
                   "busy_s": 8.0 * nbytes / r.capacity_bps,
                   "utilisation": 8.0 * nbytes / (r.capacity_bps * now) if now > 0 else 0.0, "drops": drops[r.id]}
            for k in cols:
                cols[k].append(row[k])
        return cols

    def close(self) -> None:
        """Release ns-3, which also completes its pcap files (done at the end of `simfl run`, and when another
        Ns3Network is created: ns-3 runs one at a time). The links table and drops stay readable as of now."""
        if not self._closed:
            self._final = (self.link_drops(), self.link_columns())
            self._closed = True
            self._hub.Clear()

    # ------------------------------------------------------------------ building
    def _watch_give_up(self, mod: Any) -> float:
        """A non-default network.give_up: every connection's watchdog aborts it after give_up s without progress
        while it has data outstanding, and TCP's own retransmission limits are raised out of its way. Returns how
        long ns-3 may run without a completion (`_HORIZON`, or twice give_up when that is longer)."""
        give_up = self.params.give_up
        if give_up == NetworkParams().give_up:
            return _HORIZON
        mod.Hub.LongRetries()
        self._hub.giveUpNs = _ns(give_up)
        return max(_HORIZON, 2 * give_up)

    def _pcap_dir(self, pcap_dir: str | Path | None) -> Path | None:
        if not self.options.ns3_pcap:
            return None
        if pcap_dir is None:
            raise SimflError("network.ns3_pcap = true needs a folder for ns-3's pcap files (simfl run puts them in "
                             f"RUN/{PCAP_DIR}; a World needs run_dir)")
        d = Path(pcap_dir)
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SimflError(f"{d}: cannot create the folder for ns-3's pcap files: {e.strerror or e}") from None
        return d

    def _write_hosts(self) -> None:
        """`hosts` beside ns-3's pcap files: each interface's IPv4 address and its node."""
        rows = sorted([*((self._addr[d], node) for (_, node), d in self._dev.items()), *self._aliases])
        (self.pcap_dir / "hosts").write_text("".join(f"{_ip(a)}\t{n}\n" for a, n in rows), encoding="utf-8")

    def _buffer(self, link: str) -> int:
        m = self.media.get(link)
        return (m.buffer if m is not None else None) or self.options.buffer_packets

    def _link_losses(self, link: str) -> tuple[Loss, Loss]:
        """(up, down) loss of a link or cell: a -> b and b -> a; station -> access point and back."""
        m = self.media.get(link)
        return (m.up.loss, m.down.loss) if m is not None else (NO_LOSS, NO_LOSS)

    def _set_loss(self, d: int, loss: Loss) -> None:
        if loss.rate > 0:
            self._hub.Loss(d, d).Set(loss.good, loss.bad, loss.burst, loss.gap)

    def _set_jitter(self, devs: Sequence[int], link: str) -> None:
        """The link's or cell's jitter on each of `devs` (a link: what each end sends; a cell: what each member
        receives), its random stream numbered by the device (beyond the loss models')."""
        m = self.media.get(link)
        if m is not None and m.jitter_s:
            expo = self.params.jitter_distribution == "exponential"
            for d in devs:
                self._hub.SetJitter(d, m.jitter_s * 1e9, expo, _JITTER_STREAMS + d)

    def _gap(self, bps: float) -> int:
        """The inter-frame gap (ns) at `bps`: the framing bytes beyond the 2-byte PPP header."""
        return _ns(max(0, self.params.link_header_bytes - 2) * 8 / bps)

    def _timeline(self) -> list[list[Any]]:
        """What changes over time: per outage schedule [next edge (s), "fault", (Fault, its devices)] and per traced
        link direction [next change (s), "trace", (trace, device, (repetition, row))]. A device loses what it
        receives while one of the faults that cover it is down (a link: both ends; a cell or its access point:
        every member; a node: the ends of its links)."""
        out: list[list[Any]] = []
        self._covers: dict[int, list[Any]] = {}
        g = self.topology.graph
        for f, edges in self.topology.faults:
            devs = sorted({d for e in edges for d in self._edge_rx(g.edges[tuple(e)]["link"], e, f)})
            for d in devs:
                self._hub.Loss(d, d)
                self._covers.setdefault(d, []).append(f)
            out.append([0.0, "fault", (f, devs)])
        for r in self.topology.resources:
            tr = r.trace
            if tr is not None:  # a WiFi cell's: its access point's device (see _plan)
                nxt = tr.following(0, 0)
                if nxt is not None:
                    out.append([tr.change_time(*nxt), "trace", (tr, self._res_devs[r.id][0], nxt)])
        return out

    def _plan(self, until: float) -> None:
        """Schedule in ns-3 every outage edge and capacity change up to simulated time `until`."""
        if until <= self._planned:
            return
        hub, t0 = self._hub, self._t0_ns
        for ch in self._changes:
            while ch[0] <= until:
                t = ch[0]
                if ch[1] == "fault":
                    f, devs = ch[2]
                    for d in devs:
                        hub.ScheduleDown(d, t0 + _ns(t), any(x.is_down(t) for x in self._covers[d]))
                    ch[0] = f.next_edge(t)
                else:
                    tr, d, pos = ch[2]
                    bps = tr.rates[pos[1]]
                    if d in self._cell_devs:  # a WiFi cell: every member's data mode, the MCS closest to bps
                        n, within = self._cell_devs[d]
                        cpp.load(wifi=True).ScheduleMcs(hub, d, n, t0 + _ns(t), vht_mode(bps, within)[2])
                    else:
                        hub.ScheduleRate(d, t0 + _ns(t), round(bps), self._gap(bps))
                    nxt = tr.following(*pos)
                    ch[0] = math.inf if nxt is None else tr.change_time(*nxt)
                    ch[2] = (tr, d, nxt)
        self._planned = until

    def _queue(self, node: str) -> int:
        return HOST_QDISCS[self.options.host_qdisc] if self.topology.kind(node) in HOST_KINDS else 0

    def _build(self) -> None:
        hub, p = self._hub, self.params
        topo = self.topology
        hub.AddNodes(len(topo.nodes))
        p2p = [r for r in topo.resources if r.medium == "p2p"]
        for k in range(0, len(p2p), 2):
            ra, rb = p2p[k], p2p[k + 1]
            if ra.link != rb.link or (ra.src, ra.dst) != (rb.dst, rb.src):
                raise SimflError(f"ns3 backend: link {ra.link!r}: expected its two directions next to each other")
            da = hub.AddLink(self._idx[ra.src], self._idx[ra.dst], round(ra.capacity_bps), _ns(ra.latency_s),
                             self._gap(ra.capacity_bps), round(rb.capacity_bps), _ns(rb.latency_s),
                             self._gap(rb.capacity_bps), p.mtu, p.link_header_bytes, 0x0A000000 + 4 * (k // 2),
                             self._queue(ra.src), self._queue(rb.src), self._buffer(ra.link))
            up, down = self._link_losses(ra.link)
            self._set_loss(da + 1, up)  # b's device receives what a sends
            self._set_loss(da, down)
            self._set_jitter((da, da + 1), ra.link)
            self._rx[ra.id], self._rx[rb.id] = da + 1, da
            for d, r in ((da, ra), (da + 1, rb)):
                self._dev[(r.link, r.src)] = d
                self._addr[d] = int(hub.devs[d].address)
                self._res_devs[r.id] = [d]
                if self.pcap_dir is not None:
                    hub.PcapDevice(d, str(self.pcap_dir / f"{r.link}.{r.src}.pcap"))
        cells = [r for r in topo.resources if r.medium == "cell"]
        for j, r in enumerate(cells):
            if r.link not in self._duplex:
                self._add_cell(j, r)
            elif r.src == "*":  # a duplex cell's up channel; its down channel is the next resource
                self._add_duplex_cell(r, cells[j + 1])
        if self._cells:
            mod = cpp.load(wifi=True)
            for node in sorted({n for (m, n) in self._dev if m in self.cell_modes}, key=self._idx.__getitem__):
                mod.InstallRxHooks(hub, self._idx[node])
        if self.pcap_dir is not None:
            self._write_hosts()

    def _add_cell(self, j: int, r: Resource) -> None:
        """One WiFi cell: its access point and stations, the VHT mode closest to the cell's capacity. With a capacity
        trace, the channel width and streams are those of the trace's peak, and the MCS follows the trace."""
        g, ap = self.topology.graph, r.src
        stations = [n for n in self.topology.nodes
                    if g.has_edge(ap, n) and g.edges[ap, n]["medium"] == "cell" and g.edges[ap, n]["link"] == r.link]
        members = [ap, *stations]
        width, nss, mcs, phy_bps = vht_mode(max((r.capacity_bps, *(r.trace.rates if r.trace else ()))))
        if r.trace is not None:
            width, nss, mcs, phy_bps = vht_mode(r.capacity_bps, (width, nss))
        self.cell_modes[r.link] = {"standard": "802.11ac", "width_mhz": width, "streams": nss, "mcs": mcs,
                                   "phy_bps": phy_bps}
        p = self.params
        pcap = [] if self.pcap_dir is None else [str(self.pcap_dir / f"{r.link}.{n}.pcap") for n in members]
        d0 = int(cpp.load(wifi=True).AddCell(self._hub, [self._idx[n] for n in members],
                                             [self._queue(n) for n in members], self._buffer(r.link),
                                             0x0A800000 + (j << 16), width, nss, mcs, p.mtu, p.link_header_bytes,
                                             r.link, pcap))
        up, down = self._link_losses(r.link)
        for i, n in enumerate(members):
            self._dev[(r.link, n)] = d0 + i
            self._addr[d0 + i] = int(self._hub.devs[d0 + i].address)
            self._set_loss(d0 + i, up if i == 0 else down)  # the access point receives what its stations send
        self._res_devs[r.id] = list(range(d0, d0 + len(members)))
        self._set_jitter(self._res_devs[r.id], r.link)
        self._cells.append((r.id, d0, len(stations)))
        self._cell_devs[d0] = (len(stations), (width, nss))
        self._ap_of[r.link] = ap

    def _add_duplex_cell(self, up: Resource, down: Resource) -> None:
        """A duplex (FDD) cell as two shared point-to-point channels through two hidden nodes, "<cell>~up" (U) and
        "<cell>~down" (D): each station -> U and D -> station over a link _AIR_SPEEDUP x faster than the cell's
        largest capacity (no latency), U -> access point at the up capacity and latency, access point -> D at the
        down ones; the access point's port queues the cell's buffer, U's what its stations' queues hold together.
        Each link's other direction is unused.
        A station sends from its link to U (its address in the cell) and receives on its link from D."""
        hub, p, topo = self._hub, self.params, self.topology
        cell, ap, g = up.link, down.src, topo.graph
        stations = [n for n in topo.nodes if n != ap and g.has_edge(ap, n) and g.edges[ap, n]["link"] == cell]
        fast = _AIR_SPEEDUP * max(max(r.trace.rates) if r.trace else r.capacity_bps for r in (up, down))
        u, dn = f"{cell}~up", f"{cell}~down"
        self._idx[u], self._idx[dn] = len(self._idx), len(self._idx) + 1
        hub.AddNodes(2)
        buf, loss_up, loss_down = self._buffer(cell), *self._link_losses(cell)
        made: list[tuple[int, str]] = []  # (device, node) of every end of the hidden links

        def link(a: str, b: str, bps: float, lat: float, qa: int = 0, limit: int = buf) -> tuple[int, int]:
            q = [qa or (self._queue(a) if a in topo.graph else 0), self._queue(b) if b in topo.graph else 0]
            da = hub.AddLink(self._idx[a], self._idx[b], round(bps), _ns(lat), self._gap(bps), round(bps), _ns(lat),
                             self._gap(bps), p.mtu, p.link_header_bytes, _AIR_SUBNET0 + 4 * self._n_air, *q, limit)
            self._n_air += 1
            for d, n in ((da, a), (da + 1, b)):
                self._addr[d] = int(hub.devs[d].address)
                made.append((d, n))
            return da, da + 1

        hidden_up, hidden_down = [], []
        for s in stations:
            s_up, u_in = link(s, u, fast, 0.0)
            d_out, s_down = link(dn, s, fast, 0.0)
            self._dev[(cell, s)] = s_up
            self._air_rx[(cell, s)] = (u_in, s_down)
            self._set_loss(s_down, loss_down)
            hidden_up += [s_up, u_in]
            hidden_down += [d_out, s_down]
            self._air[(cell, s, ap)] = ((s, s_up, u_in),)  # the rest of the way is added below
            self._air[(cell, ap, s)] = ((dn, d_out, s_down),)
        # the up channel's queue stands for its stations' own (each a transmitter: a UE's backlog waits in it until
        # it is scheduled), the down channel's is the base station's port, of the cell's buffer
        held = sum(_HOST_QUEUE[self.options.host_qdisc] if self._queue(s) else buf for s in stations)
        uplink, ap_in = link(u, ap, up.capacity_bps, up.latency_s, _CHANNEL_QUEUE, max(held, buf))
        ap_out, d_in = link(ap, dn, down.capacity_bps, down.latency_s, _CHANNEL_QUEUE)
        self._set_loss(ap_in, loss_up)  # the access point receives what its stations send
        for s in stations:
            self._air[(cell, s, ap)] += ((u, uplink, ap_in),)
            self._air[(cell, ap, s)] = ((ap, ap_out, d_in), *self._air[(cell, ap, s)])
        self._dev[(cell, ap)] = ap_in
        named = {self._dev[(cell, n)] for n in (ap, *stations)}
        self._aliases += [(self._addr[d], n) for d, n in made if d not in named]
        self._res_devs[up.id], self._res_devs[down.id] = [uplink], [ap_out]
        self._rx[up.id], self._rx[down.id] = ap_in, d_in
        self._hidden[up.id], self._hidden[down.id] = hidden_up, hidden_down
        if self.pcap_dir is not None:
            hub.PcapDevice(uplink, str(self.pcap_dir / f"{cell}.up.pcap"))
            hub.PcapDevice(ap_out, str(self.pcap_dir / f"{cell}.down.pcap"))

    def _edge_rx(self, link: str, edge: Any, fault: Fault) -> tuple[int, ...]:
        """The devices that receive what crosses a graph edge (a link, or a station's membership of a cell): what a
        fault of the edge makes them lose. A WiFi station's node fault: its own device only (its access point
        does not hear a station whose device is down: OnCellRx)."""
        if link in self._duplex:
            return next(self._air_rx[(link, n)] for n in edge if (link, n) in self._air_rx)
        if fault.target == "node" and link in self.cell_modes and fault.name != self._ap_of[link]:
            return (self._dev[(link, fault.name)],)
        return tuple(self._dev[(link, n)] for n in edge)

    def _start(self) -> None:
        """Initialise ns-3's nodes (at its time 0); with WiFi cells, let every station associate, then fill the ARP
        caches (an association flushes its station's cache): SimPy's time 0 is then ns-3's time `_t0_ns`."""
        hub = self._hub
        hub.RunUntil(0)
        if not self._cells:
            return
        mod = cpp.load(wifi=True)
        step = _ns(0.01)
        while not all(mod.Associated(hub, d0, n) for _, d0, n in self._cells):
            if hub.NowNs() > _ns(_ASSOCIATION_LIMIT):
                raise SimflError(f"ns3 backend: WiFi stations not associated after {_ASSOCIATION_LIMIT:g} s")
            hub.RunUntil(hub.NowNs() + step)
        mod.FillArp()
        self._t0_ns = int(hub.NowNs())

    def _new_flow(self, src: str, dst: str, key: tuple[str, ...], stream: Stream | None) -> _Flow:
        if src == dst:
            raise SimflError(f"send: source and destination are the same node ({src!r})")
        flow = _Flow(src, dst, self.topology.route_tuple(src, dst), stream)
        self._flows[key] = flow
        return flow

    def _open(self, flow: _Flow) -> None:
        """The flow's TCP connection, and host routes along simfl's routes for its data and its ACKs."""
        src, dst, fwd = flow.src, flow.dst, flow.hops
        back = self.topology.route_tuple(dst, src)
        if self._reroutes:  # over what is up now: the source address is that of the interface it leaves by
            fwd, back = self._paths(src, dst, fwd, back)
            flow.hops = fwd
        s_addr = self._addr[self._dev[(fwd[0].link, src)]]
        d_addr = self._addr[self._dev[(fwd[-1].link, dst)]]
        if self._reroutes:
            self._routed.append([flow, back, s_addr, d_addr])
        self._add_routes(fwd, d_addr)
        self._add_routes(back, s_addr)
        port = self._ports.get(src, _PORT0)
        if port > 65535:
            raise SimflError(f"ns3 backend: node {src!r} opens more than {65536 - _PORT0} connections")
        self._ports[src] = port + 1
        if flow.datagram:  # the receiver listens on a port of its own, below every sending socket's
            rport = _UDP_PORT0 + int(self._hub.udps.size())
            if rport >= _PORT0:
                raise SimflError(f"ns3 backend: more than {_PORT0 - _UDP_PORT0} datagram streams")
            flow.conn = self._hub.OpenUdp(self._idx[src], s_addr, port, self._idx[dst], d_addr, rport)
        else:
            flow.conn = self._hub.Open(self._idx[src], s_addr, port, self._idx[dst], d_addr)
            self._conns[flow.conn] = flow
        if flow.control:
            self._hub.MarkControl(flow.datagram, flow.conn)

    @staticmethod
    def _tied(node: str) -> None:
        raise SimflError(f"ns3 backend: node {node!r} would need two routes to one address (simfl's least-latency "
                         "routes differ by source on this topology); give the tied paths different latencies")

    def _steps(self, h: Hop) -> tuple[tuple[str, int, int], ...]:
        """The (node, device, next device) forwarding steps of hop h: one, or a duplex cell's steps via its air
        nodes."""
        return self._air.get((h.link, h.src, h.dst), ((h.src, self._dev[(h.link, h.src)], self._dev[(h.link, h.dst)]),))

    def _add_routes(self, hops: tuple[Hop, ...], addr: int) -> None:
        for h in hops:
            for node, d, via in self._steps(h):
                old = self._routes.get((node, addr))
                if old == d:
                    continue
                if old is not None:
                    self._tied(node)
                self._routes[(node, addr)] = d
                self._hub.AddRoute(self._idx[node], addr, d, self._addr[via])

    # ------------------------------------------------------------------ rerouting around outages
    def _reroutable(self) -> bool:
        """Whether some fault takes down an edge whose ends another path still joins (the fluid model reroutes
        around it; so do the routes here, at each fault edge)."""
        for _, edges in self.topology.faults:
            cut = self.topology.without_edges(edges)
            if any(v in cut.reachable(u) for u, v in (tuple(e) for e in edges)):
                return True
        return False

    def _paths(self, src: str, dst: str, there: tuple[Hop, ...], back: tuple[Hop, ...]) -> tuple[tuple[Hop, ...],
                                                                                                  tuple[Hop, ...]]:
        """The routes src -> dst and back over what is up now (the fluid model's, same tie-break); where none is,
        `there` and `back` (kept: TCP retransmits into the outage, as without rerouting)."""
        t, b = self._topo_now.route_or_none(src, dst), self._topo_now.route_or_none(dst, src)
        return (there, back) if t is None or b is None else (t, b)

    def _follow_faults(self, now: float) -> None:
        """At a fault edge (the pump stops at each one): every connection's host routes, there and back, follow
        the routes over what is up now; a node's route to an address no route uses any more is removed."""
        down = self.topology.edges_down(now)
        if down == self._down:
            return
        self._down = down
        self._topo_now = self.topology.without_edges(down) if down else self.topology
        old, self._routes = self._routes, {}
        want: dict[tuple[str, int], tuple[int, int]] = {}  # (node, address) -> (device, next device)
        for r in self._routed:
            flow = r[0]
            flow.hops, r[1] = self._paths(flow.src, flow.dst, flow.hops, r[1])
            for hops, addr in ((flow.hops, r[3]), (r[1], r[2])):
                for h in hops:
                    for node, d, via in self._steps(h):
                        if want.setdefault((node, addr), (d, via)) != (d, via):
                            self._tied(node)
                        self._routes[(node, addr)] = d
        hub = self._hub
        for (node, addr) in old.keys() - want.keys():
            hub.SetRoute(self._idx[node], addr, -1, 0)
        for (node, addr), (d, via) in want.items():
            if old.get((node, addr)) != d:
                hub.SetRoute(self._idx[node], addr, d, self._addr[via])

    # ------------------------------------------------------------------ co-simulation
    def _check_open(self) -> None:
        if self._closed:
            raise SimflError("this Ns3Network was closed (ns-3 runs one network per process: a newer one replaced "
                             "it)")

    def _schedule(self, t: float) -> None:
        """Run the pump at simulated time t (after SimPy's normal events there) unless it runs earlier anyway."""
        if self._pump_t is not None and self._pump_t <= t:
            return
        self._pump_t = t
        self._token += 1
        token = self._token
        _Wake(self.env, t - self.env.now, lambda _ev: self._pump(token))

    def _pump(self, token: int) -> None:
        """Bring ns-3 to now, deliver what completed, hand it the new messages, and run it until SimPy's next
        event or the next completion, whichever is first; then come back at that instant."""
        if token != self._token or self._closed:
            return
        self._pump_t = None
        env, hub = self.env, self._hub
        now = env.now
        t0 = self._t0_ns
        self._plan(now)
        hub.RunUntil(t0 + _ns(now))
        if self._reroutes:
            self._follow_faults(now)
        self._collect(now)
        p = self.params
        for tx in self._outbox:
            flow = tx.flow
            if flow.conn < 0:
                self._open(flow)
            if flow.datagram:
                hub.SendFrame(flow.conn, tx.bytes, tx.msg_id, p.mtu - _UDP_IP_HEADER,
                              _UDP_IP_HEADER + p.link_header_bytes)
            else:
                hub.Send(flow.conn, tx.bytes, tx.msg_id)
        self._outbox.clear()
        if self._crashing:
            self._abort_crashed()
        self._collect(now)
        if not hub.inflight:
            return  # sleep until the next send
        t_next = env.peek()
        if t_next <= now:
            self._schedule(now)  # SimPy has more to do at this instant (e.g. the deliveries just made)
            return
        until = t_next if t_next < math.inf else now + self._horizon
        if any(ch[0] < math.inf for ch in self._changes):
            until = min(until, now + _CHANGE_WINDOW)  # outage edges and rate changes are scheduled a window ahead
        if self._reroutes:
            until = min(until, self.topology.next_fault_edge(now))  # the routes change there
        self._plan(until)
        stop = t0 + _ns(until)
        t_ns = hub.RunUntil(stop)
        if not self._settling() and t_next == math.inf and hub.udpLeft.size() and (
                t_ns < stop or (t_ns - t0) * 1e-9 - self._settled_t >= _HORIZON):
            hub.LoseUdpFrames()  # ns-3 has nothing left to do, or nothing settled for an hour: they never arrive
        if self._settling():
            self._schedule(min(max((t_ns - t0) * 1e-9, now), until))
        elif stop <= t_ns and until < now + self._horizon:
            self._schedule(until)
        # else: no completion within the horizon (ns-3 has events but no message progresses): they stay in flight

    def _abort_crashed(self) -> None:
        """The nodes that crashed at this instant: the TCP connections they send on are aborted (their messages not
        yet delivered are lost at the next `_collect`); flows to them leave their connections, which deliver what
        was written into them (to a crashed node: to_crashed), so that the next message opens a new connection.
        Background flows are left alone, as in the fluid model."""
        for node in self._crashing:
            self._hub.Flush(self._idx[node])
            for flow in self._flows.values():
                if flow.background or flow.conn < 0 or node not in (flow.src, flow.dst):
                    continue
                if flow.src == node:
                    self._hub.Crash(flow.conn, _ns(self.options.min_rto))
                else:
                    flow.conn = -1
        self._crashing.clear()

    def _settling(self) -> bool:
        """Whether ns-3 stopped on something to settle: a message done, a frame lost, a connection that gave up."""
        hub = self._hub
        return bool(hub.done.size() or hub.lostFrames.size() or hub.failed.size())

    def _collect(self, now: float) -> None:
        hub = self._hub
        if hub.failed.size():  # connections that gave up: the pair's next message opens a new one
            for i in range(hub.failed.size()):
                ci = int(hub.failed[i])
                flow = self._conns.pop(ci, None)  # (a crashed sender's connection is listed again if it drains)
                if flow is not None and flow.conn == ci:  # (a flow to a crashed node left it for a new one)
                    flow.conn = -1
            hub.failed.clear()
        for ids, settle in ((hub.done, self._deliver), (hub.lostFrames, self._lose), (hub.gaveUp, self._give_up)):
            n = ids.size()
            if n:
                got = [int(ids[i]) for i in range(n)]
                ids.clear()
                self._settled_t = now
                for i in got:
                    settle(self._txs.pop(i), now)

    def _lose(self, tx: _Tx, now: float) -> None:
        """A datagram frame one of whose datagrams was dropped (or that never arrived): recorded as lost (t_tx its
        send, t_deliver NaN); its event fails with `MessageLost`."""
        f = tx.flow
        a = self._hub.acct[tx.msg_id]
        t = max(tx.t_send, (int(a.tFirst) - self._t0_ns) * 1e-9)
        msg = Message(tx.msg_id, f.src, f.dst, tx.kind, tx.phase, tx.round, tx.payload_bits, int(a.wire),
                      int(a.segs), len(f.hops), tx.t_send, t, t, math.nan, tx.payload, 0, LOST)
        self.recorder.record_message(msg)
        tx.event.fail(MessageLost(msg))

    def _give_up(self, tx: _Tx, now: float) -> None:
        """A message of a TCP connection that gave up, lost now as in the fluid model: status "lost", the bytes it
        sent so far (retransmissions too) as wire_bytes, t_start its first byte's transmission (NaN: none), t_tx and
        t_deliver NaN; its event fails with `MessageLost`, and it is put in `losses(dst)` if that was asked for."""
        f, p = tx.flow, self.params
        a = self._hub.acct[tx.msg_id]
        first = int(a.tFirst)
        t_start = max(tx.t_send, (first - self._t0_ns) * 1e-9) if first >= 0 else math.nan
        n = packetize(tx.payload_bits, p.mtu, p.ip_header_bytes, p.link_header_bytes).n_packets
        retx = int(a.retx)
        msg = Message(tx.msg_id, f.src, f.dst, tx.kind, tx.phase, tx.round, tx.payload_bits, int(a.wire), n,
                      len(f.hops), tx.t_send, t_start, math.nan, math.nan, tx.payload, retx, LOST)
        self.retransmitted_bytes[tx.msg_id] = retx
        self.recorder.record_message(msg)
        tx.event.fail(MessageLost(msg))
        box = self._losses.get(f.dst) if not f.background and f.src not in self._crashed else None
        if box is not None:
            box.put(msg)

    def _deliver(self, tx: _Tx, now: float) -> None:
        f = tx.flow
        a = self._hub.acct[tx.msg_id]
        retx = int(a.retx)
        t_start = max(tx.t_send, (int(a.tFirst) - self._t0_ns) * 1e-9)
        t_tx = min(now, max(t_start, (int(a.tLast) - self._t0_ns) * 1e-9))
        crashed = f.dst in self._crashed and not f.background  # it reached a crashed node: it fails there
        msg = Message(tx.msg_id, f.src, f.dst, tx.kind, tx.phase, tx.round, tx.payload_bits, int(a.wire),
                      int(a.segs), len(f.hops), tx.t_send, t_start, t_tx, now, tx.payload, retx,
                      TO_CRASHED if crashed else DELIVERED)
        self.retransmitted_bytes[tx.msg_id] = retx
        for h in f.hops:
            self._res_msgs[h.resource] += 1
        self.recorder.record_message(msg)
        if crashed:
            tx.event.fail(MessageLost(msg))
            return
        self.delivered += 1
        tx.event.succeed(msg)
        if not f.background:
            self.mailboxes.put(msg)


@atexit.register
def _release() -> None:
    for ref in _current:
        net = ref()
        if net is not None:
            net.close()
