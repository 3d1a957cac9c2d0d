"""Packet-level network backend: ns-3 (TCP/IP, finite queues, drops) co-simulated with SimPy.

`Ns3Network(env, topology, params, recorder, seed=..., options=..., media=...)` (or
`Ns3Network.for_scenario(env, topology, scenario, recorder)`, as `World` builds it) has the public API of
`simfl.network.Network` (`send`, `inbox`, `losses`, `totals`, `link_columns`, `sent`, `delivered`, `in_flight`,
`keep_unclaimed`, `allow_crashes`, `crash`, `recover`, `is_down`), so the protocol runs unchanged on either backend.
It needs the `ns3` package (ns-3 3.44 with cppyy bindings: `pip install ns3`, or the `ns3` / `dev` extras); the first
use in a process loads ns-3 and compiles a small C++ hub (`simfl.ns3.cpp`), which takes 10-20 s.

Co-simulation (SimPy keeps the clock). `send` queues a message; a low-priority "pump" event, run after every
normal SimPy event of an instant, hands the instant's new messages to ns-3 at that same simulated time, then runs
ns-3 until SimPy's next event (`env.peek()`) or the next message completion, whichever comes first, and schedules
itself at that instant, where the completed messages are delivered (event value and `inbox(dst)`). A message
completes when the receiver's byte count on its connection reaches the message's last byte (the hub stops ns-3
there). While no message is in flight the pump sleeps and ns-3 waits; it catches up at the next send. ns-3 counts
time in integer nanoseconds, SimPy's float times are rounded to them.

What is simulated (per link of the scenario):
- Point-to-point links with the link's rate and latency, full duplex. A packet occupies the wire for its IP bytes
  plus `link_header_bytes` (a 2-byte PPP header and an inter-frame gap for the rest: Ethernet's 38 bytes of framing
  by default); the MTU is `mtu`.
- Forwarding nodes (switches, APs, gateways) are IP routers whose ports (link directions) have drop-tail queues of
  the link's (or cell's) `buffer`, else `network.buffer` packets (`buffer_packets`, default 100: about 150 kB per
  port, what commodity switches' shared buffers of a few MB give each of their 24-48 ports, and ns-3's own default
  device queue). End hosts (clients, servers, clouds) have a queue discipline: `host_qdisc` = "fq" (default:
  fq_codel's per-flow fair queueing with its drop law off, since ns-3's TCP has no TCP Small Queues and Linux's
  fq_codel + TSQ keep the backlog in the socket, not the queue), "fq_codel" (as ns-3 configures it) or "fifo"
  (1,000 packets, Linux's txqueuelen).
- Routing: static host routes that follow simfl's own routes (`Topology.route_tuple`) for data and ACKs; with
  [[faults]] that leave another path, the routes over what is up (see below).
- TCP (ns-3's, CUBIC, SACK, no timestamps so that a full segment is mtu bytes): one persistent connection per
  sender-receiver pair, opened at its first message (the handshake is paid once); messages on a pair go through it
  FIFO, each starting a segment of its own: the next message is written into the socket once every byte of the
  previous one has been transmitted (1 ns later: ns-3 sends new socket data one time step after the write), so a
  message's first transmissions are exactly simfl's packetization (Linux would let a short message share the last
  segment of the one before: at most one header per message of difference). Segment size mtu - ip_header_bytes;
  Linux-like timers: minimum RTO `min_rto` (200 ms), delayed ACK `delayed_ack` (40 ms), SYN timeout `syn_timeout`
  (1 s); initial window `network.initial_window` (10 segments). A connection gives up after 6 SYN or 15 data
  retransmissions (Linux's tcp_syn_retries and tcp_retries2): it closes, and every message written into it and not
  yet delivered is lost then, in order, as in the fluid model (status "lost", the bytes it sent so far as
  wire_bytes, t_tx and t_deliver NaN; its send event fails with `MessageLost`; put in `losses(dst)` if that store
  was asked for); the pair's next message opens a new connection (with its handshake). A `network.give_up` other
  than its default (924.6 s, about what the 15 retransmissions take) replaces them: each connection's watchdog
  aborts it (its socket released without a packet, its messages lost as above) once it has had data outstanding
  for give_up s without the receiver's byte count advancing (counted from the last byte that arrived, or from
  when data became outstanding on an idle connection; the fluid model counts from the first stall, so a message
  cut off by an outage is lost up to one packet's transmission earlier here); TCP's own limits are raised out of
  its way (data: 100,000 retransmissions; SYN: 30).
- WiFi cells: 802.11ac, each cell on its own channel (no interference between cells, as the fluid model assumes),
  the access point and its stations within 5 m, one fixed VHT mode per cell: the one whose PHY rate is closest to
  the cell's capacity / 0.70 (a station alone in a cell gets about 70% of the PHY rate as TCP goodput in ns-3;
  `cell_modes` says what was chosen; with a capacity trace, the channel width and streams are those of the trace's
  peak, and the MCS follows the trace, see below). Stations associate before simulated time 0; ARP tables are
  filled statically.
  Approximations: the cell's `latency` is not modelled (channel access and aggregation give their own delays; a
  propagation delay of milliseconds would break 802.11's timing); the access point's port queue is its
  best-effort MAC queue of the cell's buffer (see above); a station's MAC queue holds 64 packets (enough for an
  aggregate) under its queue discipline, like a driver's small queue under Linux's. MAC queues drop only when
  full (ns-3 would also drop what waited 500 ms; a driver does not). Every cell with one shared channel is
  802.11ac, whatever its radio (constrained-plant's cells stand for private LTE).
- Duplex cells (a bandwidth, or a trace, per direction: an LTE/5G FDD cell, not 802.11): two shared channels, one
  per direction, through two hidden forwarding nodes "<cell>~up" and "<cell>~down". Each station sends to ~up
  and receives from ~down over point-to-point links 1,000 times faster than the cell's largest capacity (its
  traces' peaks included; no latency), so their serialisation is negligible; ~up -> access point is a link of the
  up capacity and latency, access point -> ~down one of the down ones (the other direction of each hidden link is
  unused). The two channel ports (~up's and the access point's) share their direction between flows by fair
  queueing (fq_codel's, its drop law off; when full it drops one packet of the longest flow): a base station
  schedules its UEs, so a station's TCP ACKs do not wait behind another station's upload (FIFO would). The down
  channel's queue is the base station's port: the cell's buffer. The up channel's stands for its stations' own
  queues, where a UE's backlog waits for its grants: it holds what they hold together (a host's queue
  discipline: 10,240 packets for fq and fq_codel, 1,000 for fifo; a forwarding station: the cell's buffer). Not
  modelled: HARQ and link adaptation, the scheduler's grants and its subframe timing (a packet is sent as soon as
  its flow's turn comes, at the channel's rate), per-UE channel quality, control-plane delays; the cell's latency
  is a fixed delay per direction.

Imperfect links (the scenario's keys, as in the fluid model; `media` gives the links and cells):
- loss per direction (`loss`, `burst_loss`): `simfl_ns3::LinkLoss`, an ns-3 ErrorModel subclass (a Gilbert-Elliott
  chain per packet; independent draws without `burst`), as the receive error model of the point-to-point device at
  the receiving end; in a WiFi cell, at each member's IP layer (the packets 802.11 delivered: a loss TCP sees); in
  a duplex cell, the up loss at the access point's end of the up channel, the down loss at each station's end of
  its link from ~down (as in a WiFi cell: one chain for the uplink, one per station for the downlink). Its
  random stream is numbered by the device, so it depends on the seed only.
- asymmetric links: a data rate per device, a channel (`simfl_ns3::AsymChannel`) with a delay per direction.
- [[faults]]: while a fault is down, the loss models of the devices it covers lose everything (both ends of a link,
  every member of a cell, the ends of a node's links and the cells it is the access point of; a duplex cell's
  station: its links to ~up and from ~down; a WiFi station: its own device, and its access point does not hear it
  while its device is down, so it neither sends nor receives and the cell's other stations go on); the edges are
  scheduled in ns-3 as simulated time advances. Where
  another path joins the ends of an edge a fault takes down, the routes follow the fluid model's: the pump stops
  at every fault edge and reinstalls each connection's host
  routes, there and back, along `topology.without_edges(the edges down)`'s routes (the same tie-break; a pair
  with no path keeps its routes, and TCP retransmits into the outage until it ends, as it does everywhere without
  another path). A connection keeps the addresses of the path it opened on (weak host model: a node accepts
  its addresses on any interface); what was in flight on the path that went down is lost, and TCP resends it
  on the new path after a retransmission timeout (the fluid model moves the rest of the message at once).
- jitter (`jitter` of links and cells, `network.jitter_distribution`): each packet crossing a jittered hop (a link
  direction: `simfl_ns3::AsymChannel`; a cell: at each member's IP layer, after its loss model) gets a seeded
  extra delay D of mean J, uniform on [0, 2J) or exponential, but never arrives before the packet before it on
  that hop: arrival = max(previous arrival, arrival without jitter + D) (FIFO, as the fluid model keeps per flow).
  Its random stream is numbered by the device. The fluid model draws once per message and hop; here every packet
  draws, so a message's last packet waits for the largest of its packets' draws within a few packet times of its
  end: with J well under a packet's transmission time a hop adds about J, with J over several packet times up to
  about 2J (uniform); ACKs and handshakes are delayed too.
- Node crashes (`crash`, `recover`, after `allow_crashes`; a fedad run's client and server faults), with the
  fluid model's statuses: at the crash (the pump of that instant) the packets waiting in the node's queue discs and
  point-to-point device queues are dropped, and its TCP connections are aborted (sockets released without a
  packet): each message not yet delivered that had not wholly reached the wire fails then (status "lost", the
  bytes TCP had sent; not put in `losses`); one that had still arrives with what is on its way, or fails after
  `min_rto` without any of it arriving (a segment of it was lost: nobody will resend it). Flows to it leave their
  connections, which deliver what was written into them; a message that arrives while its receiver is down fails
  there (status "to_crashed", t_deliver its arrival). A crashed node's TCP still receives and acknowledges, as
  the fluid model's crashed node still absorbs what reaches it. After `recover` its messages, and those to it, go
  over new connections (with their handshake). Background flows are left alone, as in the fluid model.
  Approximation: a WiFi station's MAC queue is not emptied (what it holds is still sent).
- capacity traces of links and of duplex cells' channels: the sending device's data rate changes at the trace's
  instants. A WiFi cell's trace: at its instants every member's data mode (ConstantRateWifiManager's DataMode,
  read per transmission) becomes the MCS whose PHY rate is closest to the new capacity / 0.70 among those of the
  cell's channel width and streams (the trace's peak's, `vht_mode`). Approximations: the modes are discrete (the
  capacity is rounded to the nearest; a rate below the slowest mode gets the slowest), the 0.70 goodput share is
  ns-3's at 80 MHz MCS 7 (a lone download measured 0.69 at MCS 8, 0.75 at MCS 5, 0.78 at MCS 4), control frames
  keep their rate, and a PPDU under way ends at its old rate.
- [[traffic]] flows (`send(..., stream=...)`), traced as background (no inbox): a tcp
  stream has a connection of its own; a datagram stream sends each frame as UDP datagrams of up to mtu - 28 bytes
  tagged with it (`FrameTag`), lost when a queue, queue disc or loss model drops one of them (or, never arriving
  without a trace, once ns-3 has nothing left to do or nothing settled for `_HORIZON`). Control priority
  (`priority=True`, set by `for_scenario` when a flow has it): the flow's sockets set IP ToS 0xb8 (DSCP EF; socket
  priority 4 by ns-3's Linux-like table, which it also applies where it forwards), every point-to-point port has a
  strict-priority queue disc (band 0: priority 4, and 5, the user priority 802.11 tags) over a 1-packet device
  queue, and every WiFi device a queue disc per access category (mq, each child the device's usual one) over its
  MAC queues: ns-3 maps the DS field's three top bits to the 802.11 user priority (EF: 5, the video access
  category), whose EDCA parameters (AIFSN 2, CW 7-15) win the channel over best effort (AIFSN 3, CW 15-1023). EDCA
  does not preempt: a control frame still waits for a PPDU under way (up to 5.484 ms in 802.11ac).
- refused with a one-line SimflError naming the key (`refuse_unsupported`): handshake off.

Trace: `wire_bytes` of a message = the payload bytes of every segment transmitted for it (retransmissions included)
plus `header_bytes` per segment whose first new byte is its (a segment that retransmits bytes without new ones
counts its header to the message of its first byte, as retransmitted); `n_packets` counts its first
transmissions: segments whose first new byte is its; `retransmitted_bytes` (per message in the
`retransmitted_bytes` dict, and in `Message`) is the retransmitted part, so wire_bytes - retransmitted_bytes =
payload bytes + n_packets x header_bytes, simfl's packetization (a retransmission that carries new bytes along, or a
0-byte message, which sends no segment, can differ: `simfl export` handles both). `t_start` is when its first byte
was first transmitted, `t_tx` when one of its bytes was last (re)transmitted. Links: `bytes` counts every packet a
link direction transmitted (ACKs, handshakes, retransmissions included), `busy_s` their transmission time, and
`drops` (`link_drops()`) the packets each queue or loss model dropped. `close()` (at the end of `simfl run`)
releases ns-3; the links table stays readable.

pcap (`network.ns3_pcap = true`): ns-3 writes what it transmits into RUN/ns3-pcap/: one file per link direction,
`<link>.<sender>.pcap` (the names of `simfl export --per-link`), every packet the sender starts to transmit
(link type PPP, nanosecond timestamps, 192 bytes captured); and per WiFi device `<cell>.<node>.pcap` (radiotap:
every frame its radio sends or receives, beacons and block ACKs included); per duplex cell `<cell>.up.pcap` and
`<cell>.down.pcap` (its two channels, the names of `simfl export --per-link`; its hidden links are not written);
`hosts` maps ns-3's interface addresses (one /30 per link and per hidden link of a duplex cell, one /16 per WiFi
cell) to node names (the hidden nodes' as "<cell>~up", "<cell>~down"; a station's address in a duplex cell is that
of its link to ~up).

Determinism: ns-3 is seeded with the scenario's seed; the same scenario gives the same trace. One Ns3Network at a
time per process (ns-3 has one simulator): creating one closes the previous one.
"""

from simfl.ns3.cpp import available
from simfl.ns3.network import (
                               HOST_QDISCS,
                               PCAP_DIR,
                               Ns3Network,
                               Ns3Options,
                               refuse_scenario,
                               refuse_unsupported,
                               vht_mode,
)

__all__ = ["Ns3Network", "Ns3Options", "HOST_QDISCS", "PCAP_DIR", "available", "refuse_scenario", "refuse_unsupported",
           "vht_mode"]
