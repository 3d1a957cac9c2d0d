"""The scenario schema: every key of every table declared once, with its kind, default, bounds and a one-line doc.

`Checker` validates a TOML dict against these tables generically: types (bool-safe numbers), units, bounds, choices,
required keys and unknown keys (with "did you mean"). Checks that relate keys and tables to each other (unknown
nodes, duplicates, connectivity, ...) live in `simfl.config`, which also builds the frozen dataclasses of the
[network], [experiment] and [synthetic] tables from these declarations (`model`). Adding a key is one line here.

`python -m simfl.schema --markdown` prints the scenario reference (docs/scenarios.md) made from the same tables.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, NoReturn

import tomli_w

from simfl import units
from simfl.errors import SimflError

__all__ = ["ScenarioError", "Key", "Table", "Array", "Map", "Checker", "SCENARIO", "model", "markdown", "toml_value",
           "NODE_KINDS", "SERVER_KINDS", "DETECTORS", "SPLITS", "PATTERNS", "WORKLOADS", "BASELINES",
           "MAX_SEED", "REQUIRED", "MAX_LOSS", "TRAFFIC_KINDS", "PRIORITIES", "TRANSPORTS", "MIN_INTERVAL",
           "TRAFFIC_KEYS"]


class ScenarioError(SimflError):
    """A scenario file (or override) that is malformed or inconsistent."""


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # the default of a key that must be given

# kinds of values
INT, FLOAT, BOOL, STR, NAME, LIST = "int", "float", "bool", "str", "name", "list"
RATE, TIME, SIZE, FLOPS = "rate", "time", "size", "flops"
# quantity kind -> (parser, formatter, noun in messages, unit of a bare number)
_QUANTITY: dict[str, tuple[Callable[[Any], float], Callable[[float], str], str, str]] = {
    RATE: (units.parse_rate, units.format_rate, "bandwidth", "bit/s"),
    TIME: (units.parse_time, units.format_time, "time", "seconds"),
    SIZE: (units.parse_size, units.format_size, "size", "bytes"),
    FLOPS: (units.parse_flops, units.format_flops, "compute speed", "FLOP/s"),
}
_TYPE = {INT: int, FLOAT: float, BOOL: bool, STR: str, NAME: str, RATE: float, TIME: float, SIZE: int, FLOPS: float}
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")

NODE_KINDS = ("client", "switch", "ap", "gateway", "server", "cloud")
SERVER_KINDS = ("server", "cloud")
WORKLOADS = ("fedad", "synthetic")
PATTERNS = ("allpairs", "gather", "broadcast")
NETWORK_MODELS = ("fluid", "ns3")
HOST_QDISCS = ("fq", "fq_codel", "fifo")  # ns3 backend: the hosts' queue discipline
# How the fluid model shares a WiFi cell (simfl.network): per transmitter with 802.11's contention, or per flow.
CELL_ACCESS = ("station", "flow")
BASELINES = ("local", "ideal", "centralised")
# What each client detects with after FedAvg: "global" = its community's final average (sent to it after the
# last round); "last_fit" = its own last local fit, as the authors' code leaves it (Flower with evaluation off).
DETECTORS = ("global", "last_fit")
# How the clients' shards and the test sets are drawn (simfl.data): "balanced" = the authors' scheme with evenly
# mixed outliers and exact per-class shares; "authors" = their code's own draw (with split_seed 42: their data).
SPLITS = ("balanced", "authors")
# The order in which a client sends one message to each peer (phase I, synthetic all-pairs; simfl.order).
SEND_ORDERS = ("id", "rotated", "random")
# Background traffic ([[traffic]], simfl.traffic): what a flow sends, its class in the rate allocation, its transport.
TRAFFIC_KINDS = ("cbr", "periodic", "onoff", "bulk")
PRIORITIES = ("control", "best_effort")
TRANSPORTS = ("datagram", "tcp")
# What an aggregator does with an update that arrives after its round closed (experiment.late_updates).
LATE_UPDATES = ("drop", "next_round")

# Numbers at the edges: beyond these a run overflows, never ends or means nothing.
MAX_SEED = 2**32 - 1  # numpy's legacy RandomState (the authors' split) takes 32-bit seeds
MAX_LATENCY = 3600.0  # s: one hour
MIN_BANDWIDTH, MAX_BANDWIDTH = 1.0, 1e15  # bit/s: 1 bit/s .. 1 Pbit/s
MAX_MESSAGE_BYTES = 2**40  # 1 TiB: bits and wire bytes of a message stay exact in int64
MIN_FLOPS, MAX_FLOPS = 1e3, 1e18  # FLOP/s: 1 kFLOP/s .. 1 EFLOP/s
MAX_GROUP = 100_000  # nodes in one [[node_groups]] entry
MAX_EPOCHS = 100_000  # epochs, rounds, patience
# Peak memory per simulated message (its objects in flight, its routes and its trace row): the growth of peak RSS
# between network-only all-pairs runs of 100 to 600 clients (9,900 .. 359,400 messages) was 1.70 to 1.85 kB per
# message, and 2.17 to 2.20 kB once messages carried t_tx, a status and the handshake's and loss's state
# (tests/test_config.py measures it again).
MESSAGE_BYTES_IN_MEMORY = 2_200
MAX_BUFFER = 10**9  # packets in one port's queue
MAX_LOSS = 0.5  # packet loss per hop: beyond, TCP's loss-limited rate formula (Mathis) means nothing
MAX_TIME = 365 * 86400.0  # s: outage times, one year
MAX_GIVE_UP = 86400.0  # s: one day
MIN_INTERVAL = 1e-6  # s: the shortest repeat: a background flow's frame gap, an outage's period and length, a
#                      capacity trace's step and period (PROFINET IRT's shortest cycle is 31.25 us). Each repetition is
#                      an event: a shorter one would cost events, not accuracy, and one below the float clock's
#                      resolution (2e-16 s at 1 s) would stop simulated time


@dataclass(frozen=True)
class Key:
    """One key: `kind` (int, float, bool, str, name, rate, time, size, flops, list), its default (`REQUIRED`: must
    be given; None: unset unless given), bounds `lo`/`hi` (`open_lo`/`open_hi`: the bound itself is excluded),
    `choices` for strings, and for lists the `item` key, `min_len`, `unique` and `scalar_ok` (one bare item is
    read as a list of one); `why` explains the bounds in error messages, `noun` names a quantity in them."""

    name: str
    kind: str
    default: Any = REQUIRED
    doc: str = ""
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False
    choices: tuple[str, ...] = ()
    item: Key | None = None
    min_len: int = 0
    unique: bool = False
    scalar_ok: bool = False
    why: str = ""  # said after a bound error
    noun: str = ""  # what a quantity is called in bound errors (default: its kind's: "latency" for a time)

    @property
    def annotation(self) -> Any:
        t: Any = tuple if self.kind == LIST else _TYPE[self.kind]
        return t | None if self.default is None else t


def of(kind: str, **bounds: Any) -> Key:
    """The key of a list's items."""
    return Key("", kind, **bounds)


@dataclass(frozen=True)
class Table:
    """A table of keys and sub-tables; `optional`: absent means None (not a table of defaults)."""

    name: str
    entries: tuple[Entry, ...]
    doc: str = ""
    optional: bool = False

    def entry(self, name: str) -> Entry | None:
        return next((e for e in self.entries if e.name == name), None)

    @property
    def names(self) -> list[str]:
        return sorted(e.name for e in self.entries)


@dataclass(frozen=True)
class Array:
    """An array of tables, [[name]]."""

    name: str
    table: Table
    doc: str = ""


@dataclass(frozen=True)
class Map:
    """Names of the user's choosing, each with a value (`Key`) or a table (validated partially: every key
    optional, no defaults); `label` says what the names are ("profile", "node")."""

    name: str
    value: Key | Table
    label: str
    doc: str = ""


Entry = Key | Table | Array | Map

# ----------------------------------------------------------------------------------------------------- the tables
_LATENCY = dict(lo=0.0, hi=MAX_LATENCY, noun="latency")
_SEED = dict(lo=0, hi=MAX_SEED, why="seeds are 32-bit: 0 .. 2^32 - 1")
_BANDWIDTH = dict(lo=MIN_BANDWIDTH, hi=MAX_BANDWIDTH)
_SPEED = dict(lo=MIN_FLOPS, hi=MAX_FLOPS)
_LOSS = dict(lo=0.0, hi=MAX_LOSS, why="beyond, TCP's loss-limited rate formula means nothing")
_MOMENT = dict(lo=0.0, hi=MAX_TIME, noun="time")
_SPAN = dict(lo=0.0, hi=MAX_TIME, open_lo=True, noun="time")
_INTERVAL = dict(lo=MIN_INTERVAL, hi=MAX_TIME, noun="time")

BURST_LOSS = Table("burst_loss", (
    Key("good", FLOAT, 0.0, "packet loss probability in the good state", lo=0.0, hi=1.0, open_hi=True),
    Key("bad", FLOAT, 1.0, "packet loss probability in the bad state", lo=0.0, hi=1.0),
    Key("burst", FLOAT, REQUIRED, "mean run of the bad state, in packets", lo=1.0, hi=1e9),
    Key("gap", FLOAT, REQUIRED, "mean run of the good state, in packets", lo=1.0, hi=1e9),
), "Gilbert-Elliott burst loss on every hop in both directions, instead of loss (stationary rate at most 0.5)",
    optional=True)


def _medium(shared: str, up: str, down: str) -> tuple[Entry, ...]:
    """The keys of a link, an uplink or a cell: capacity, delay, loss, jitter and capacity traces, with their
    direction-specific forms (`up` / `down` say which direction is which)."""
    return (
        Key("bandwidth", RATE, None, f"{shared} (required unless both directions or a trace give it)",
            **_BANDWIDTH),
        Key("bandwidth_up", RATE, None, f"capacity {up}", **_BANDWIDTH),
        Key("bandwidth_down", RATE, None, f"capacity {down}", **_BANDWIDTH),
        Key("latency", TIME, 0.0, "one-way propagation delay", **_LATENCY),
        Key("latency_up", TIME, None, f"one-way delay {up}", **_LATENCY),
        Key("latency_down", TIME, None, f"one-way delay {down}", **_LATENCY),
        Key("loss", FLOAT, 0.0, "probability that a packet is lost on a hop, independently", **_LOSS),
        Key("loss_up", FLOAT, None, f"packet loss probability {up}", **_LOSS),
        Key("loss_down", FLOAT, None, f"packet loss probability {down}", **_LOSS),
        BURST_LOSS,
        Key("jitter", TIME, 0.0, "mean extra delay per hop, drawn per message (network.jitter_distribution)",
            **{**_LATENCY, "noun": "jitter"}),
        Key("bandwidth_trace", STR, None, "capacity over time instead of bandwidth: a CSV file of "
            "time_s,bandwidth_bps rows (path relative to the scenario file)"),
        Key("bandwidth_trace_up", STR, None, f"capacity trace {up}"),
        Key("bandwidth_trace_down", STR, None, f"capacity trace {down}"),
        Key("bandwidth_trace_period", TIME, None, "repeat the traces with this period (unset: each trace's "
            "last value holds)", **_INTERVAL),
    )


UPLINK = Table("uplink", (
    Key("to", NAME, REQUIRED, "the node at the other end of the link"),
    *_medium("each direction's capacity", "node -> to", "to -> node"),
    Key("name", NAME, None, "the link's name (default <node>-<to>; not in [[node_groups]])"),
    Key("buffer", INT, None, "packets each sending port of the link queues (unset: network.buffer)", lo=1,
        hi=MAX_BUFFER),
), "the node's own full-duplex link to another node", optional=True)
_COMPUTE = (
    Key("profile", NAME, None, "a [profiles] name for its compute speed (clients: edge, server/cloud: server)"),
    Key("flops", FLOPS, None, "its compute speed, instead of a profile", **_SPEED),
)
_CELL_OF = Key("cell", NAME, None, "the [[cells]] entry whose shared medium the node joins as a station")

NETWORK = Table("network", (
    Key("mtu", INT, 1500, "bytes of IP packet (headers included); messages are cut into packets of this size",
        lo=2, hi=65535),
    Key("ip_header_bytes", INT, 40, "IP + transport header bytes per packet", lo=0, hi=65534),
    Key("link_header_bytes", INT, 38, "link-layer framing bytes per packet (Ethernet: 38)", lo=0, hi=65535),
    Key("buffer", INT, 100, "packets a port's drop-tail queue holds, where a link or cell gives none (incast "
        "check)", lo=1, hi=MAX_BUFFER),
    Key("initial_window", INT, 10, "TCP initial window in segments (Linux: 10; incast check)", lo=1, hi=65535),
    Key("headers", BOOL, True, "count header bytes on the wire (false: payload only, as the paper counts)"),
    Key("handshake", BOOL, True, "a node pair's first message waits one round trip (TCP's SYN, SYN-ACK)"),
    Key("give_up", TIME, 924.6, "a message stalled this long on a path that is down is lost (Linux TCP: 15 "
        "retries, 924.6 s)", lo=0.0, hi=MAX_GIVE_UP, open_lo=True, noun="time"),
    Key("jitter_distribution", STR, "uniform", "per-hop jitter: uniform on [0, 2 x jitter), or exponential of "
        "mean jitter", choices=("uniform", "exponential")),
    Key("cell_access", STR, "station", "fluid: how a WiFi cell (not duplex) is shared: station (802.11: per "
        "transmitter, the access point one of them, at C x eta(k) while k contend) or flow (per flow crossing, at "
        "C)", choices=CELL_ACCESS),
    Key("model", STR, "fluid", "the network backend: fluid (max-min fair flows, fast) or ns3 (packet-level ns-3: "
        "TCP, finite queues, drops; needs the ns3 package)", choices=NETWORK_MODELS),
    Key("host_qdisc", STR, "fq", "ns3: the hosts' queue discipline (fq: per-flow fair queueing as Linux's "
        "fq_codel without its drops; fq_codel; fifo)", choices=HOST_QDISCS),
    Key("min_rto", TIME, 0.2, "TCP's minimum retransmission timeout (Linux: 200 ms)", lo=0.001, hi=60.0),
    Key("delayed_ack", TIME, 0.04, "ns3: TCP's delayed-ACK timeout (Linux: 40 ms)", lo=0.001, hi=1.0),
    Key("syn_timeout", TIME, 1.0, "TCP's first SYN retransmission timeout (Linux: 1 s)", lo=0.001, hi=60.0),
    Key("loss_timeouts", BOOL, True, "fluid: on a lossy route a lost SYN or SYN-ACK waits syn_timeout and a lost "
        "last segment the retransmission timeout (seeded draws per message; false: the Mathis cap and expected "
        "retransmissions only)"),
    Key("ns3_pcap", BOOL, False, "ns3: ns-3 writes its own pcap per link direction and WiFi device (RUN/ns3-pcap)"),
), "packetisation of every message, the transport's handshake and give-up, and the network backend")

EXPERIMENT = Table("experiment", (
    Key("classes", LIST, tuple(range(10)), "the Fashion-MNIST classes that take part",
        item=of(INT, lo=0, hi=9, why="Fashion-MNIST classes are 0..9"), min_len=2, unique=True),
    Key("clients_per_class", INT, 9, "p: clients per class (client IDs: class by class)", lo=1, hi=6000),
    Key("clients", INT, None, "n, a check only: must equal clients_per_class x len(classes)", lo=1),
    Key("outlier_fraction", FLOAT, 0.1, "d: the share of outliers in each shard and test set",
        lo=0.0, hi=0.5, open_lo=True, open_hi=True),
    Key("split", STR, "balanced", "how shards and test sets are drawn", choices=SPLITS),
    Key("split_seed", INT, None, "the draw's seed (unset: the run's seed; the authors' is 42)", **_SEED),
    Key("max_samples_per_client", INT, None, "cut each shard to its first N samples (quick runs; unset: all)",
        lo=2, hi=60000),
    Key("tau", FLOAT, 0.06, "association tolerance, relative to a client's own inlier ratio",
        lo=0.0, hi=10.0, open_lo=True),
    Key("community_method", STR, "leiden", "community detection on the association graph",
        choices=("leiden", "fastgreedy")),
    Key("phase1_model", STR, "ae5", "phase-I model", choices=("ae5", "ocsvm")),
    Key("phase1_epochs", INT, 100, "phase-I training epochs", lo=1, hi=MAX_EPOCHS),
    Key("phase2_model", STR, "ae7", "phase-II (FedAvg) model", choices=("ae7", "flat")),
    Key("rounds", INT, 10, "FedAvg rounds", lo=1, hi=MAX_EPOCHS),
    Key("local_epochs", LIST, (1, 10), "local epochs in round i: local_epochs[min(i, len - 1)]",
        item=of(INT, lo=1, hi=MAX_EPOCHS), min_len=1),
    Key("local_baseline_epochs", INT, 40, "epochs of the local baseline (with early stopping)", lo=1, hi=MAX_EPOCHS),
    Key("patience", INT, 3, "early-stopping patience of the local baseline, in epochs", lo=1, hi=MAX_EPOCHS),
    Key("restore_best", BOOL, False, "early stopping restores the best weights (Keras keeps the last)"),
    Key("centralised_epochs", INT, 10, "epochs of the centralised baseline", lo=1, hi=MAX_EPOCHS),
    Key("aggregator", STR, "member", "who averages: the lowest-ID member of each community, or the server node",
        choices=("member", "server")),
    Key("batch_size", INT, 32, "minibatch size", lo=1, hi=1_000_000),
    Key("lr", FLOAT, 1e-3, "Adam learning rate", lo=0.0, hi=10.0, open_lo=True),
    Key("val_fraction", FLOAT, 0.1, "the last share of each shard validates instead of training",
        lo=0.0, hi=1.0, open_hi=True),
    Key("persist_optimizer", BOOL, True, "a client's Adam state carries over between FedAvg rounds"),
    Key("detector", STR, "global", "the model each client detects with after FedAvg", choices=DETECTORS),
    Key("baselines", LIST, BASELINES, "the baselines run beside the method",
        item=of(STR, choices=BASELINES), unique=True),
    Key("data_dir", STR, None, "folder with the four Fashion-MNIST IDX .gz files (unset: $SIMFL_DATA, else the "
        "system copy)"),
    Key("device", STR, "auto", "learning device", choices=("cpu", "cuda", "auto")),
    Key("workers", INT, 2, "CPU worker processes for training (0: in this process)", lo=0, hi=1024),
    Key("preset_note", STR, "", "a note on the preset, printed in the report"),
    Key("send_order", STR, "id", "the order in which each client sends its phase-I model to its peers",
        choices=SEND_ORDERS),
    Key("round_deadline", TIME, None, "a FedAvg round closes this long after its start, averaging the updates that "
        "arrived (unset: when every invited member's has)", **_SPAN),
    Key("min_participants", INT, 1, "a FedAvg round with fewer updates to average is skipped: the previous model "
        "stands", lo=1, hi=MAX_GROUP),
    Key("late_updates", STR, "drop", "updates after their round closed: dropped, or averaged at the next close",
        choices=LATE_UPDATES),
    Key("fraction_fit", FLOAT, 1.0, "share of a community invited to each FedAvg round (a seeded sample)",
        lo=0.0, hi=1.0, open_lo=True),
    Key("dropout", FLOAT, 0.0, "probability that a client sits out a FedAvg round (seeded; needs round_deadline)",
        lo=0.0, hi=1.0, open_hi=True),
    Key("phase1_deadline", TIME, None, "each phase-I wait (models, verdicts, candidate groups, the community) "
        "ends this long after it began (unset: when everything expected has come)", **_SPAN),
    Key("failover_timeout", TIME, None, "silence after which a member suspects its aggregator (a client: phase I's "
        "leader) and the next live one takes over (needs round_deadline, and must exceed it)", **_SPAN),
), "the federated anomaly-detection experiment (workload fedad); the conditions of the rounds and node faults: "
   "docs/network-aware-learning.md")

SYNTHETIC = Table("synthetic", (
    Key("message_bytes", SIZE, 12868, "payload bytes of every message (default: one AE-5 model)",
        lo=0, hi=MAX_MESSAGE_BYTES),
    Key("pattern", LIST, ("allpairs",), "patterns run one after another", item=of(STR, choices=PATTERNS),
        min_len=1, scalar_ok=True),
    Key("target", NAME, None, "the node gather and broadcast use (unset: the server, else the first client)"),
    Key("send_order", STR, "id", "the order in which each client sends to its peers in allpairs",
        choices=SEND_ORDERS),
), "network-only traffic (workload synthetic)")

_NODE = Table("nodes", (
    Key("name", NAME, REQUIRED, "the node's name"),
    Key("kind", STR, REQUIRED, "what the node is", choices=NODE_KINDS),
    *_COMPUTE, UPLINK, _CELL_OF,
))
_GROUP = Table("node_groups", (
    Key("prefix", NAME, REQUIRED, "names are <prefix><index>, zero-padded to the largest index's width"),
    Key("count", INT, REQUIRED, "how many nodes", lo=1, hi=MAX_GROUP),
    Key("start", INT, 0, "the first index", lo=0, hi=10**9),
    Key("kind", STR, "client", "what the nodes are", choices=NODE_KINDS),
    *_COMPUTE, UPLINK, _CELL_OF,
))
_OVERRIDE = Table("node_overrides", (*_COMPUTE, UPLINK, _CELL_OF))
_LINK = Table("links", (
    Key("a", NAME, REQUIRED, "one end"),
    Key("b", NAME, REQUIRED, "the other end"),
    *_medium("each direction's capacity", "a -> b", "b -> a"),
    Key("name", NAME, None, "the link's name (default <a>-<b>)"),
    Key("buffer", INT, None, "packets each sending port of the link queues (unset: network.buffer)", lo=1,
        hi=MAX_BUFFER),
))
_CELLS = Table("cells", (
    Key("name", NAME, REQUIRED, "the cell's name"),
    Key("ap", NAME, REQUIRED, "its access point, a node of kind ap"),
    *_medium("the channel's capacity, shared by all its stations in both directions",
             "station -> AP (a cell given a capacity per direction has one channel per direction)",
             "AP -> station"),
    Key("buffer", INT, None, "packets each transmitter's queue on the channel holds (unset: network.buffer)",
        lo=1, hi=MAX_BUFFER),
))
_FAULT = Table("faults", (
    Key("link", NAME, None, "a link that goes down, both directions (an uplink is named <node>-<to>)"),
    Key("cell", NAME, None, "a cell that goes down: its channel, for all its stations"),
    Key("node", NAME, None, "a node whose links and cell membership all go down"),
    Key("down", TIME, None, "one outage: when it begins", **_MOMENT),
    Key("up", TIME, None, "one outage: when it ends (unset: never)", **_MOMENT),
    Key("every", TIME, None, "repeating outages: one begins every this long", **_INTERVAL),
    Key("duration", TIME, None, "repeating outages: each lasts this long (less than every)", **_INTERVAL),
    Key("start", TIME, None, "repeating outages: when the first begins (unset: 0 s)", **_MOMENT),
    Key("until", TIME, None, "repeating outages: none begins at or after this (unset: they go on)", **_MOMENT),
))

_TRAFFIC = Table("traffic", (
    Key("name", NAME, REQUIRED, "the flow's name (the flow column of background.parquet)"),
    Key("src", NAME, REQUIRED, "the node that sends"),
    Key("dst", NAME, REQUIRED, "the node that receives"),
    Key("kind", STR, REQUIRED, "cbr: frames of `packet` bytes at `rate`; periodic: a frame of `bytes` every "
        "`period`; onoff: cbr during `on`, silent during `off`; bulk: an upload of `bytes` every `every`, or once",
        choices=TRAFFIC_KINDS),
    Key("priority", STR, "best_effort", "control: strict priority over all other traffic; best_effort: shares "
        "fairly with FL", choices=PRIORITIES),
    Key("transport", STR, None, "datagram (no handshake, no retransmission: a lost frame is lost; UDP, PROFINET RT) "
        "or tcp (as FL's messages); unset: tcp for bulk, else datagram", choices=TRANSPORTS),
    Key("start", TIME, 0.0, "when the first frame is sent", **_MOMENT),
    Key("stop", TIME, None, "no frame is sent at or after this (unset: when the workload ends)", **_SPAN),
    Key("rate", RATE, None, "cbr, onoff: payload bit rate while sending (headers come on top)", **_BANDWIDTH),
    Key("packet", SIZE, None, "cbr, onoff: payload bytes per frame (unset: one MSS, mtu - ip_header_bytes)",
        lo=1, hi=MAX_MESSAGE_BYTES),
    Key("bytes", SIZE, None, "periodic: payload bytes per frame; bulk: per upload", lo=1, hi=MAX_MESSAGE_BYTES),
    Key("period", TIME, None, "periodic: one frame every this long (the cycle time)", **_INTERVAL),
    Key("on", TIME, None, "onoff: how long each sending period lasts", **_INTERVAL),
    Key("off", TIME, None, "onoff: how long each silent period lasts", **_INTERVAL),
    Key("every", TIME, None, "bulk: one upload every this long from start (unset: one upload, at start)", **_INTERVAL),
))
TRAFFIC_KEYS = {"cbr": ("rate", "packet"), "periodic": ("bytes", "period"), "onoff": ("rate", "packet", "on", "off"),
                "bulk": ("bytes", "every")}  # the keys of each kind (the rest of the per-kind keys must be unset)

SCENARIO = Table("", (
    Key("name", NAME, None, "the scenario's name (default: the file name without .toml)"),
    Key("description", STR, "", "one line on what it models"),
    Key("seed", INT, 0, "the seed that fixes everything (--seed replaces it)", **_SEED),
    Key("workload", STR, "fedad", "what runs on the network", choices=WORKLOADS),
    Key("extends", STR, None, "another scenario file (path relative to this one) this one starts from"),
    NETWORK,
    Map("profiles", Key("", FLOPS, doc="a compute speed", **_SPEED), "profile",
        "named compute speeds (built in: edge = 10 GFLOP/s, server = 1 TFLOP/s)"),
    Array("nodes", _NODE, "single nodes, in declaration order"),
    Array("node_groups", _GROUP, "numbered nodes sharing one description, after the [[nodes]]"),
    Map("node_overrides", _OVERRIDE, "node", "changes to one node of [[nodes]] or [[node_groups]]: any of these "
        "keys; uplink keys change only what is given (a node without an uplink needs to and bandwidth)"),
    Array("links", _LINK, "full-duplex point-to-point links: each direction has the bandwidth"),
    Array("cells", _CELLS, "shared media (WiFi cells): all stations share one channel"),
    Array("faults", _FAULT, "outages: exactly one of link, cell and node goes down, once (down, up) or repeatedly "
          "(every, duration, start, until)"),
    Array("traffic", _TRAFFIC, "the plant's own background flows between any two nodes, traced in background.parquet "
          "and summarised with and without the workload (docs/network-model.md, Background traffic)"),
    EXPERIMENT,
    SYNTHETIC,
))


# ----------------------------------------------------------------------------------------------- messages
def toml_value(v: Any) -> str:
    """`v` as a TOML value on one line (strings, bools, numbers, lists, inline tables; a Path as its string)."""
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_inline_key(str(k))} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, PurePath):
        v = str(v)
    if not isinstance(v, bool | int | float | str):
        raise TypeError(f"cannot write {type(v).__name__} as TOML")
    return tomli_w.dumps({"v": v})[4:-1]


def show(v: Any) -> str:
    """A value as TOML writes it, on one line (for messages), cut to 80 characters."""
    try:
        s = toml_value(v)
    except TypeError:
        s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


def _inline_key(k: str) -> str:
    return tomli_w.dumps({k: 0})[:-5]


def join(where: str, k: str | int) -> str:
    """The dotted key of `k` inside `where`: "links[2]", "experiment.rounds"."""
    if isinstance(k, int):
        return f"{where}[{k}]"
    k = _inline_key(k)  # quoted where TOML would quote it: one line, whatever the key holds
    return f"{where}.{k}" if where else k


def did_you_mean(v: str, choices: Sequence[str], cutoff: float = 0.6) -> str:
    """"; did you mean 'x'?" with the closest choices (up to three, within 0.1 of the closest's similarity)."""
    close = difflib.get_close_matches(v, list(choices), n=3, cutoff=cutoff)
    if close:
        score = [difflib.SequenceMatcher(None, v, c).ratio() for c in close]
        close = [c for c, r in zip(close, score) if r >= score[0] - 0.1]
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _fmt(key: Key, x: float) -> str:
    if key.kind in _QUANTITY:
        return _QUANTITY[key.kind][1](x)
    return f"{x:,}" if key.kind == INT else f"{x:g}"


def _range_text(key: Key) -> str:
    """The allowed range as in "(0, 0.5)", "1 bps .. 1000 Tbps", ">= 1"."""
    lo, hi = key.lo, key.hi
    if lo is not None and hi is not None:
        if key.kind == FLOAT:
            return f"{'(' if key.open_lo else '['}{_fmt(key, lo)}, {_fmt(key, hi)}{')' if key.open_hi else ']'}"
        return f"{_fmt(key, lo)} .. {_fmt(key, hi)}"
    if lo is not None:
        return f"{'>' if key.open_lo else '>='} {_fmt(key, lo)}"
    if hi is not None:
        return f"{'<' if key.open_hi else '<='} {_fmt(key, hi)}"
    return ""


def bound_error(key: Key, x: float) -> str | None:
    """Why `x` is outside `key`'s bounds, or None."""
    lo, hi = key.lo, key.hi
    lo_bad = lo is not None and (x < lo or (key.open_lo and x == lo))
    hi_bad = hi is not None and (x > hi or (key.open_hi and x == hi))
    if not (lo_bad or hi_bad):
        return None
    if key.kind not in _QUANTITY:
        if key.kind == FLOAT and lo is not None and hi is not None:
            return f"must lie in {_range_text(key)}"
        one_sided = dataclasses.replace(key, hi=None) if lo_bad else dataclasses.replace(key, lo=None)
        return f"must be {_range_text(one_sided)}"
    noun = key.noun or _QUANTITY[key.kind][2]
    if lo_bad and x <= 0 and (key.open_lo or (lo or 0) > 0):
        return f"{noun} must be positive"
    if lo_bad and x < 0:
        return f"{noun} must not be negative"
    return f"{noun} must be at least {_fmt(key, lo)}" if lo_bad else f"{noun} must be at most {_fmt(key, hi)}"  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- validation
class Checker:
    """Validates values and tables of one source (a file name or "<dict>") against the schema; every failure is
    one `ScenarioError`: "<source>: <dotted key> = <value>: <reason>"."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.given: dict[str, Any] = {}  # quantities as written, by dotted key (for messages after parsing)

    def fail(self, key: str, value: Any, msg: str) -> NoReturn:
        raise ScenarioError(f"{self.source}: {key} = {show(value)}: {msg}")

    def fail_key(self, key: str, msg: str) -> NoReturn:
        raise ScenarioError(f"{self.source}: {key}: {msg}")

    def entry(self, e: Entry, v: Any, where: str, partial: bool = False) -> Any:
        if isinstance(e, Key):
            return self.value(e, v, where)
        if isinstance(e, Table):
            return self.table(e, v, where, partial)
        if isinstance(e, Array):
            if not isinstance(v, list | tuple):
                self.fail(where, v, "expected a list of tables")
            return [self.table(e.table, t, join(where, i)) for i, t in enumerate(v)]
        return self.map(e, v, where)

    def table(self, spec: Table, t: Any, where: str, partial: bool = False) -> dict[str, Any]:
        """`t` checked key by key; absent keys get their defaults (`partial`: stay absent)."""
        if not isinstance(t, Mapping):
            self.fail(where or "the scenario", t, "expected a table")
        for k, v in t.items():
            if spec.entry(k) is None:
                self.fail(join(where, str(k)), v, f"unknown key{did_you_mean(str(k), spec.names)} (known keys: "
                          f"{', '.join(spec.names)})")
        out: dict[str, Any] = {}
        for e in spec.entries:
            w = join(where, e.name)
            if e.name in t:
                out[e.name] = self.entry(e, t[e.name], w, partial)
            elif partial:
                continue
            elif isinstance(e, Key) and e.default is REQUIRED:
                self.fail_key(w, f"missing (required: {e.doc})")
            elif isinstance(e, Key):
                out[e.name] = e.default
            elif isinstance(e, Table):
                out[e.name] = None if e.optional else self.table(e, {}, w)
            else:
                out[e.name] = [] if isinstance(e, Array) else {}
        return out

    def map(self, spec: Map, t: Any, where: str) -> dict[str, Any]:
        if not isinstance(t, Mapping):
            self.fail(where, t, f"expected a table of {spec.label} names")
        out = {}
        for key, v in t.items():
            k = str(key)  # TOML keys are strings; a dict built in code may hold others
            w = join(where, k)
            if not _NAME_RE.fullmatch(str(k)):
                self.fail(w, v, f"a {spec.label} name may use only letters, digits, '_', '-' and '.'")
            out[k] = self.entry(spec.value, v, w, partial=True)
        return out

    def value(self, key: Key, v: Any, where: str) -> Any:
        """One value checked against `key`: type, unit, bounds, choices (lists as tuples)."""
        if key.default is None and (v is None or (v == "none" and key.kind in _QUANTITY)):
            return None  # "none" unsets an optional quantity (a sweep's --vary can give it)
        if key.kind == LIST:
            return self._list(key, v, where)
        if key.kind in _QUANTITY:
            return self._quantity(key, v, where)
        if key.kind == BOOL:
            if not isinstance(v, bool):
                self.fail(where, v, "expected true or false")
            return v
        if key.kind in (STR, NAME):
            return self._str(key, v, where)
        if isinstance(v, bool) or not isinstance(v, int | float) or (key.kind == INT and not isinstance(v, int)):
            self.fail(where, v, "expected an integer" if key.kind == INT else "expected a number")
        if not math.isfinite(v):
            self.fail(where, v, "must be finite")
        self._bounds(key, v, v, where)
        return float(v) if key.kind == FLOAT else v

    def _bounds(self, key: Key, x: float, v: Any, where: str) -> None:
        why = bound_error(key, x)
        if why is not None:
            self.fail(where, v, why + (f" ({key.why})" if key.why else ""))

    def _str(self, key: Key, v: Any, where: str) -> str:
        if not isinstance(v, str):
            self.fail(where, v, "expected a string")
        if key.choices and v not in key.choices:
            self.fail(where, v, f"must be one of {', '.join(key.choices)}" + did_you_mean(v, key.choices))
        if key.kind == NAME and not _NAME_RE.fullmatch(v):
            self.fail(where, v, "names may use only letters, digits, '_', '-' and '.'")
        return v

    def _quantity(self, key: Key, v: Any, where: str) -> float | int:
        self.given[where] = v
        parse = _QUANTITY[key.kind][0]
        try:
            x = parse(v)
        except units.UnitError as e:
            self.fail(where, v, str(e))
        self._bounds(key, x, v, where)
        if key.kind == SIZE:
            if not x.is_integer():
                self.fail(where, v, "must be a whole number of bytes")
            return int(x)
        return x

    def _list(self, key: Key, v: Any, where: str) -> tuple:
        if key.scalar_ok and not isinstance(v, list | tuple):
            v = [v]
        if not isinstance(v, list | tuple):
            self.fail(where, v, "expected a list")
        if len(v) < key.min_len:
            self.fail(where, v, f"need at least {key.min_len} entr{'y' if key.min_len == 1 else 'ies'}")
        assert key.item is not None
        out = tuple(self.value(key.item, x, join(where, i)) for i, x in enumerate(v))
        if key.unique and len(set(out)) != len(out):
            self.fail(where, v, "entries must be unique")
        return out


# ----------------------------------------------------------------------------------------------- dataclasses
def model(cls_name: str, spec: Table, module: str, doc: str, namespace: dict[str, Any] | None = None) -> type:
    """A frozen dataclass with one field per key of `spec` (in order, with its default)."""
    fields = [(k.name, k.annotation, dataclasses.field(default=k.default)) for k in spec.entries
              if isinstance(k, Key)]
    cls = dataclasses.make_dataclass(cls_name, fields, frozen=True, namespace=namespace or {})
    cls.__module__ = module
    cls.__doc__ = doc
    return cls


# ------------------------------------------------------------------------------------------------ the reference
_KIND_TEXT = {INT: "integer", FLOAT: "number", BOOL: "true/false", STR: "string", NAME: "name",
              RATE: "rate", TIME: "time", SIZE: "size", FLOPS: "compute speed"}

_INTRO = """\
# Scenario files

A scenario is a TOML file (the library is in `topologies/`). `simfl run FILE` reads it, applies `--set` overrides,
checks every key and value, and stops at the first mistake with one line naming the file, the dotted key, the value
and what is wrong, e.g.

    topologies/x.toml: links[2].bandwidth = "-5 Mbps": bandwidth must be positive

This reference is generated from the schema in `simfl/schema.py` (`python -m simfl.schema --markdown`); a test keeps
it equal to the code.

## Values

- **Names** (nodes, links, cells, profiles, prefixes) use only letters, digits, `_`, `-` and `.`.
- **Quantities** are written with a unit, as people write them: `"100 Mbps"`, `"1 Gbit/s"`, `"12.5 MB/s"` (bytes
  per second, x 8), `"250 us"`, `"2 ms"`, `"5 GFLOP/s"`, `"12 kB"`, `"1 MiB"`. Prefixes are decimal (k, M, G, T, P, E);
  sizes also know KiB, MiB, GiB and TiB. A **bare number** is read in the base unit: a rate in bit/s, a time in seconds,
  a size in bytes, a compute speed in FLOP/s (`bandwidth = 1e6` is 1 Mbps). A string without a unit is an error.
- **Numbers at the edges** are rejected with the key: every bound is in the tables below. Latencies lie in 0 .. 1
  hour, bandwidths in 1 bit/s .. 1 Pbit/s, message sizes in 0 .. 2^40 bytes, compute speeds in 1 kFLOP/s ..
  1 EFLOP/s, seeds in 0 .. 2^32 - 1 (also `--seed` and `experiment.split_seed`). Integers and numbers never accept
  `true`/`false`. An optional quantity (default "unset") given as `"none"` stays unset: `--vary
  'experiment.round_deadline=["none", "5 s"]'`.
- **Memory**: before running, simfl estimates the memory the run's messages need (about {per_message:,} bytes per
  message in flight and in the trace, measured on an all-pairs run: all-pairs sends n (n - 1) messages for n
  clients, fedad about 2 n (n - 1) in phase I) and refuses a run that would not fit in the machine's memory.
- **Data**: workload fedad reads Fashion-MNIST from `experiment.data_dir` if it is set, else from the folder in the
  environment variable `SIMFL_DATA` if that is set, else from `/usr/share/datasets/fashion-mnist` (Debian's
  dataset-fashion-mnist package). A folder given in the scenario or the variable that lacks any of the four IDX
  files is an error naming the folder and where it came from; the default folder is used only when none is given.

## Overrides, extends, client IDs

- `--set KEY=VALUE` (repeatable) changes a key before validation. KEY is dotted, with `[i]` for array entries:
  `--set experiment.rounds=3`, `--set 'node_groups[0].uplink.bandwidth=10 Mbps'`,
  `--set 'experiment.local_epochs=[2, 5]'`. VALUE is read as a TOML value (`3`, `true`, `[1, 2]`, `"x"`) and
  otherwise kept as a string. `[*]` sets the key in every entry of the array: `--set 'cells[*].loss=0.02'`,
  `--set 'traffic[*].stop="60 s"'` (also in `simfl sweep --vary`). An override of `loss`, `loss_up` or
  `loss_down` replaces the entry's `burst_loss`, and one of `burst_loss` its loss keys: the override gives the loss
  model; likewise `bandwidth` and `bandwidth_trace` replace each other (and `bandwidth_up` / `_trace_up`,
  `bandwidth_down` / `_trace_down`), also in `[node_overrides]` over a group's uplink (in one table, giving
  both is an error). `--seed N` replaces `seed`.
- `extends = "other.toml"` (relative to this file) starts from another scenario: its tables merge key by key, every
  other value (arrays too) is replaced by this file's; its `name` and `description` are not inherited.
  Extends may chain, not loop.
- Declaration order fixes the client IDs: the `[[nodes]]` entries in order, then each `[[node_groups]]` entry's
  nodes. With the experiment's `p` clients per class, client i holds class `classes[i // p]`. Generated names are
  zero-padded to the width of the largest index: `count = 90` gives `c00` .. `c89`.
- Cross-checks: names are unique (nodes; links and cells share one namespace), every link end, cell, access point,
  profile and `synthetic.target` exists, every client (and the server) is connected to the server (else to the first
  client) by links and cells, at most one node is a server or cloud, the aggregator "server" and the "centralised"
  baseline need one, workload fedad needs `clients_per_class x len(classes)` client nodes, and the shards it draws
  from Fashion-MNIST's 6,000 training images per class must leave every client at least one training sample.
"""


def _default_text(k: Key, partial: bool) -> str:
    if partial:
        return "unchanged"
    if k.default is REQUIRED:
        return "required"
    if k.default is None:
        return "unset"
    if k.kind in _QUANTITY:
        return f'`"{_QUANTITY[k.kind][1](k.default)}"`'
    return f"`{show(list(k.default) if isinstance(k.default, tuple) else k.default)}`"


def _allowed_text(k: Key) -> str:
    if k.kind == LIST:
        assert k.item is not None
        parts = [f"at least {k.min_len}"] if k.min_len else []
        parts += ["unique"] if k.unique else []
        parts += ["a bare item is a list of one"] if k.scalar_ok else []
        inner = _allowed_text(k.item)
        return "; ".join(parts + ([f"each {inner}"] if inner else []))
    if k.choices:
        return ", ".join(f"`{c}`" for c in k.choices)
    rng = _range_text(k)
    return rng + ("; whole bytes" if k.kind == SIZE else "")


def _type_text(k: Key) -> str:
    if k.kind == LIST:
        assert k.item is not None
        return f"list of {_type_text(k.item)}s"
    if k.kind in _QUANTITY:
        return f"{_KIND_TEXT[k.kind]} ({_QUANTITY[k.kind][3]})"
    return _KIND_TEXT[k.kind]


def _key_rows(spec: Table, prefix: str, partial: bool) -> list[str]:
    rows = []
    for e in spec.entries:
        if isinstance(e, Key):
            rows.append(f"| `{prefix}{e.name}` | {_type_text(e)} | {_default_text(e, partial)} | "
                        f"{_allowed_text(e)} | {e.doc} |")
        elif isinstance(e, Table):
            default = "unchanged" if partial else "unset" if e.optional else ""
            rows += [f"| `{prefix}{e.name}` | table | {default} | | {e.doc} |"]
            rows += _key_rows(e, f"{prefix}{e.name}.", partial)
    return rows


def _section(title: str, doc: str, spec: Table | None, key: Key | None = None, partial: bool = False) -> list[str]:
    out = ["", f"## {title}", "", doc[:1].upper() + doc[1:] + ".", "",
           "| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    if key is not None:
        out.append(f"| `<name>` | {_type_text(key)} | | {_allowed_text(key)} | {key.doc} |")
    if spec is not None:
        out += _key_rows(spec, "", partial)
    return out


def markdown() -> str:
    """The scenario reference (docs/scenarios.md), from the tables."""
    out = [_INTRO.format(per_message=MESSAGE_BYTES_IN_MEMORY).rstrip("\n")]
    top = Table("", tuple(e for e in SCENARIO.entries if isinstance(e, Key)))
    out += _section("Top level", "keys outside any table", top)
    for e in SCENARIO.entries:
        if isinstance(e, Table):
            out += _section(f"[{e.name}]", e.doc, e)
        elif isinstance(e, Array):
            out += _section(f"[[{e.name}]]", e.doc, e.table)
        elif isinstance(e, Map) and isinstance(e.value, Key):
            out += _section(f"[{e.name}]", e.doc, None, e.value)
        elif isinstance(e, Map):
            assert isinstance(e.value, Table)
            out += _section(f"[{e.name}.<{e.label}>]", e.doc, e.value, partial=True)
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args != ["--markdown"]:
        print("usage: python -m simfl.schema --markdown", file=sys.stderr)
        return 2
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
