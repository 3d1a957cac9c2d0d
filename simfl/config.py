"""Scenario files: reading, `extends`, `--set` overrides, the checks across keys, and the frozen model.

A scenario is a TOML file (see `topologies/` and docs/scenarios.md). `load_scenario` reads it, resolves `extends`,
applies `--set KEY=VALUE` overrides to the TOML dict, validates it and returns a frozen `Scenario`. Every key is
declared once in `simfl.schema` (kind, default, bounds, doc), which checks single values; this module checks what
relates keys to each other (unknown nodes and cells, duplicates, connectivity, a server where one is needed, enough
clients, shards the data can fill, memory) and builds the model. Every mistake raises one `ScenarioError` whose
message names the file, the dotted key and the bad value, e.g.

    topologies/x.toml: links[2].bandwidth = "-5 Mbps": bandwidth must be positive

Declaration order (it fixes the client IDs): the [[nodes]] entries in order, then each [[node_groups]] entry's nodes.
Generated names are zero-padded to the width of the largest index: count = 90 gives c00 .. c89.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import tomli_w

from simfl import data, units
from simfl.faults import FAULT_TARGETS, Fault
from simfl.linkmodels import NO_LOSS, CapacityTrace, Loss, read_trace
from simfl.schema import (
    DETECTORS,
    EXPERIMENT,
    MAX_BANDWIDTH,
    MAX_LOSS,
    MAX_SEED,
    MESSAGE_BYTES_IN_MEMORY,
    MIN_BANDWIDTH,
    MIN_INTERVAL,
    NETWORK,
    NODE_KINDS,
    SCENARIO,
    SERVER_KINDS,
    SPLITS,
    SYNTHETIC,
    TRAFFIC_KEYS,
    Array,
    Checker,
    Map,
    ScenarioError,
    Table,
    did_you_mean,
    join,
    model,
    show,
    toml_value,
)

__all__ = [
    "ScenarioError",
    "Scenario",
    "Node",
    "Link",
    "Cell",
    "Direction",
    "Traffic",
    "NetworkParams",
    "SyntheticParams",
    "Experiment",
    "DEFAULT_SCENARIO",
    "DEFAULT_PROFILES",
    "NODE_KINDS",
    "DETECTORS",
    "SPLITS",
    "load_scenario",
    "scenario_from_dict",
    "apply_overrides",
    "estimated_messages",
    "toml_value",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCENARIO = REPO_ROOT / "topologies" / "default.toml"

# Compute speeds used when a scenario does not redefine them (FLOP/s). Sources are in topologies/*.toml comments:
# edge ~ a Raspberry-Pi-4-class quad-core ARM board, server ~ a multi-core x86 server CPU at a fraction of peak.
DEFAULT_PROFILES: dict[str, float] = {"edge": 10e9, "server": 1e12}
DEFAULT_PROFILE_OF_KIND = {"client": "edge", "server": "server", "cloud": "server"}


# ----------------------------------------------------------------------------------------------- the frozen model
def _header_bytes(self: Any) -> int:
    """Header bytes added per packet (0 in header-less mode)."""
    return self.ip_header_bytes + self.link_header_bytes if self.headers else 0


def _n_clients(self: Any) -> int:
    """n = clients_per_class * len(classes)."""
    return self.clients_per_class * len(self.classes)


def _epochs_in_round(self: Any, i: int) -> int:
    """Local epochs in round i (0-based): local_epochs[min(i, len - 1)]."""
    return self.local_epochs[min(i, len(self.local_epochs) - 1)]


NetworkParams = model("NetworkParams", NETWORK, __name__, "The [network] table (simfl.schema.NETWORK).",
                      {"header_bytes": property(_header_bytes),
                       "buffer_packets": property(lambda self: self.buffer)})  # the name the ns3 backend reads
Experiment = model("Experiment", EXPERIMENT, __name__,
                   "The [experiment] table (simfl.schema.EXPERIMENT). Lists are held as tuples (it is frozen).",
                   {"n_clients": property(_n_clients), "epochs_in_round": _epochs_in_round})
SyntheticParams = model("SyntheticParams", SYNTHETIC, __name__,
                        "The [synthetic] table (simfl.schema.SYNTHETIC); target resolved: the server, else the "
                        "first client.")


@dataclass(frozen=True)
class Node:
    name: str
    kind: str
    profile: str | None = None
    flops: float | None = None  # FLOP/s (from the profile or given directly); None for pure network devices
    cell: str | None = None


@dataclass(frozen=True)
class Direction:
    """One direction of a link or cell: its capacity (with a trace: the trace's value at time 0), one-way delay,
    packet loss and capacity trace."""

    bandwidth_bps: float
    latency_s: float
    loss: Loss = NO_LOSS
    trace: CapacityTrace | None = None


class _TwoWay:
    """`up` and `down` of a link or cell whose own fields are the up direction and `reverse` the other."""

    bandwidth_bps: float
    latency_s: float
    loss: Loss
    trace: CapacityTrace | None
    reverse: Direction | None

    @property
    def up(self) -> Direction:
        return Direction(self.bandwidth_bps, self.latency_s, self.loss, self.trace)

    @property
    def down(self) -> Direction:
        return self.reverse if self.reverse is not None else self.up


@dataclass(frozen=True)
class Link(_TwoWay):
    """A full-duplex point-to-point link. `bandwidth_bps`, `latency_s`, `loss` and `trace` are the direction a -> b
    (`up`); `reverse` is b -> a where it differs (None: the same); `jitter_s` (mean extra delay) is both ways'."""

    name: str
    a: str
    b: str
    bandwidth_bps: float
    latency_s: float
    loss: Loss = NO_LOSS
    trace: CapacityTrace | None = None
    reverse: Direction | None = None
    jitter_s: float = 0.0
    buffer: int | None = None  # packets each sending port queues (None: network.buffer)


@dataclass(frozen=True)
class Cell(_TwoWay):
    """A shared medium (a WiFi cell): every station-AP hop of the cell, in either direction, shares one channel;
    with `duplex`, one channel per direction (FDD): station -> AP hops share `up`, AP -> station hops `down`.
    The fields are the station -> AP direction (`up`); `reverse` is AP -> station where it differs."""

    name: str
    ap: str
    bandwidth_bps: float
    latency_s: float
    loss: Loss = NO_LOSS
    trace: CapacityTrace | None = None
    reverse: Direction | None = None
    jitter_s: float = 0.0
    duplex: bool = False
    buffer: int | None = None  # packets each transmitter's queue holds (None: network.buffer)


@dataclass(frozen=True)
class Traffic:
    """A background flow ([[traffic]]; generated by `simfl.traffic`). Times in seconds, rates in bit/s, sizes in
    payload bytes; the keys its kind does not use are None (`packet` and `transport` are resolved)."""

    name: str
    src: str
    dst: str
    kind: str  # cbr | periodic | onoff | bulk
    priority: str = "best_effort"  # control | best_effort
    transport: str = "datagram"  # datagram | tcp
    start: float = 0.0
    stop: float | None = None  # None: when the workload ends
    rate: float | None = None
    packet: int | None = None
    bytes: int | None = None
    period: float | None = None
    on: float | None = None
    off: float | None = None
    every: float | None = None

    @property
    def gap(self) -> float | None:
        """Seconds between two frames while sending (cbr, onoff: 8 packet / rate; periodic: period; bulk: every,
        None for a single upload)."""
        if self.kind in ("cbr", "onoff"):
            return 8.0 * self.packet / self.rate  # type: ignore[operator]
        return self.period if self.kind == "periodic" else self.every

    @property
    def frame_bytes(self) -> int:
        """Payload bytes of each frame (or upload)."""
        return self.packet if self.kind in ("cbr", "onoff") else self.bytes  # type: ignore[return-value]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    seed: int
    workload: str
    nodes: tuple[Node, ...]
    links: tuple[Link, ...]
    cells: tuple[Cell, ...]
    profiles: tuple[tuple[str, float], ...]
    network: NetworkParams = NetworkParams()
    experiment: Experiment = Experiment()
    synthetic: SyntheticParams = SyntheticParams()
    faults: tuple[Fault, ...] = ()
    traffic: tuple[Traffic, ...] = ()
    source: Path | None = field(default=None, compare=False)
    clients: tuple[str, ...] = field(init=False)
    server: str | None = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "clients", tuple(n.name for n in self.nodes if n.kind == "client"))
        servers = [n.name for n in self.nodes if n.kind in SERVER_KINDS]
        object.__setattr__(self, "server", servers[0] if servers else None)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def replace(self, **changes: Any) -> Scenario:
        return dataclasses.replace(self, **changes)

    def to_toml(self) -> str:
        """The resolved scenario (groups expanded, overrides and seed applied) as TOML that loads back to an
        equal Scenario."""
        head = (f"# Resolved scenario written by simfl (source: {self.source or 'built in code'}).\n"
                "# Groups are expanded into nodes and uplinks into links; overrides and the seed are applied.\n\n")
        return head + tomli_w.dumps(_scenario_to_dict(self))


# ------------------------------------------------------------------------------------------------ nodes
@dataclass
class _NodeSpec:
    name: str
    kind: str
    key: str  # where it was declared, e.g. "nodes[3]" or "node_groups[0]"
    profile: tuple[str, str] | None = None  # (value, key)
    flops: float | None = None
    uplink: dict[str, Any] | None = None  # to=(value, key), bandwidth, latency, name, key
    cell: tuple[str, str] | None = None


def _compute(ck: Checker, t: Mapping[str, Any], where: str, profiles: Mapping[str, float], s: _NodeSpec) -> None:
    """The profile or flops of `t` (a validated node, group or override table) onto `s`."""
    if t.get("profile") is not None and t.get("flops") is not None:
        ck.fail(f"{where}.flops", ck.given[f"{where}.flops"], "give either profile or flops, not both")
    if t.get("profile") is not None:
        p = t["profile"]
        if p not in profiles:
            ck.fail(f"{where}.profile", p, "unknown profile" + did_you_mean(p, list(profiles))
                    + f" (profiles: {', '.join(profiles)})")
        s.profile, s.flops = (p, f"{where}.profile"), None
    if t.get("flops") is not None:
        s.flops, s.profile = t["flops"], None


# Keys that stand for each other: one given over another (by --set, or in [node_overrides] over a group's uplink)
# drops it, so that the override gives the loss model or the capacity. In one table, giving both is an error.
_REPLACES = {"loss": ("burst_loss",), "loss_up": ("burst_loss",), "loss_down": ("burst_loss",),
             "burst_loss": ("loss", "loss_up", "loss_down"),
             "bandwidth": ("bandwidth_trace",), "bandwidth_trace": ("bandwidth",),
             "bandwidth_up": ("bandwidth_trace_up",), "bandwidth_trace_up": ("bandwidth_up",),
             "bandwidth_down": ("bandwidth_trace_down",), "bandwidth_trace_down": ("bandwidth_down",)}


def _drop_orphan_period(table: dict[str, Any], given: Iterable[str]) -> None:
    """Drop the trace period of `table` when the keys `given` replaced its last trace by a bandwidth (and did not
    give a period themselves)."""
    if (any(k in ("bandwidth", "bandwidth_up", "bandwidth_down") for k in given)
            and "bandwidth_trace_period" not in given and not any(table.get(k) is not None for k in _TRACE_KEYS)):
        table.pop("bandwidth_trace_period", None)


def _uplink(ck: Checker, t: Mapping[str, Any] | None, where: str, base: dict[str, Any] | None) -> dict[str, Any]:
    """A validated uplink table (partial in overrides) on top of `base` (its bandwidth is checked by `_Media`)."""
    up = dict(base) if base else {"latency": 0.0, "name": None}
    t = t or {}
    for k in t if base else ():
        if k != "burst_loss" or not isinstance(up.get(k), dict):
            for alt in _REPLACES.get(k, ()):
                up[alt] = None
    for k, v in t.items():
        if k == "burst_loss" and isinstance(up.get(k), dict) and isinstance(v, dict):
            v = {**up[k], **v}
        up[k] = (v, f"{where}.to") if k == "to" else v
    if base:
        _drop_orphan_period(up, t)
        up["inherits"] = base["key"]  # where the values the override leaves were given (for messages)
    if up.get("to") is None:
        ck.fail_key(f"{where}.to", "missing (an uplink needs the node it connects to and a bandwidth)")
    up["key"] = where
    return up


def _cell_of(t: Mapping[str, Any], where: str) -> tuple[str, str] | None:
    return (t["cell"], f"{where}.cell") if t.get("cell") is not None else None


def _declared(ck: Checker, v: Mapping[str, Any], profiles: Mapping[str, float]) -> list[_NodeSpec]:
    """[[nodes]] then [[node_groups]] expanded, in declaration order, names unique."""
    specs: list[_NodeSpec] = []
    where_of: dict[str, str] = {}

    def add(s: _NodeSpec, name_key: str) -> None:
        if s.name in where_of:
            ck.fail(name_key, s.name, f"duplicate node (already declared at {where_of[s.name]})")
        where_of[s.name] = s.key
        specs.append(s)

    for i, t in enumerate(v["nodes"]):
        w = f"nodes[{i}]"
        s = _NodeSpec(t["name"], t["kind"], w, cell=_cell_of(t, w))
        _compute(ck, t, w, profiles, s)
        s.uplink = _uplink(ck, t["uplink"], f"{w}.uplink", None) if t["uplink"] is not None else None
        add(s, f"{w}.name")
    for i, t in enumerate(v["node_groups"]):
        w = f"node_groups[{i}]"
        proto = _NodeSpec("", t["kind"], w, cell=_cell_of(t, w))
        _compute(ck, t, w, profiles, proto)
        up = t["uplink"]
        if up is not None and up["name"] is not None:
            ck.fail(f"{w}.uplink.name", up["name"], "a group's uplinks are named <node>-<to>; "
                    "name single links in [node_overrides.<node>] instead")
        uplink = _uplink(ck, up, f"{w}.uplink", None) if up is not None else None
        start, count = t["start"], t["count"]
        width = len(str(start + count - 1))
        for j in range(start, start + count):
            s = dataclasses.replace(proto, name=f"{t['prefix']}{j:0{width}d}", uplink=dict(uplink) if uplink else None)
            add(s, f"{w}.prefix")
    return specs


def _node_specs(ck: Checker, v: Mapping[str, Any], profiles: Mapping[str, float]) -> list[_NodeSpec]:
    """The declared nodes with [node_overrides.<node>] applied."""
    specs = _declared(ck, v, profiles)
    if not specs:
        ck.fail_key("nodes", "the scenario declares no nodes (use [[nodes]] or [[node_groups]])")
    by_name = {s.name: s for s in specs}
    for name, t in v["node_overrides"].items():
        w = f"node_overrides.{name}"
        if name not in by_name:
            ck.fail(w, t, "unknown node" + did_you_mean(name, list(by_name)))
        s = by_name[name]
        _compute(ck, t, w, profiles, s)
        if "uplink" in t:
            s.uplink = _uplink(ck, t["uplink"], f"{w}.uplink", s.uplink)
        if "cell" in t:
            s.cell = _cell_of(t, w)
    return specs


def _known(ck: Checker, name: str, key: str, nodes: Mapping[str, Any]) -> None:
    if name not in nodes:
        ck.fail(key, name, "unknown node" + did_you_mean(name, list(nodes), cutoff=0.5))


def _cells(ck: Checker, entries: list[dict[str, Any]], nodes: Mapping[str, _NodeSpec], media: _Media) -> list[Cell]:
    cells: list[Cell] = []
    where_of: dict[str, str] = {}
    ap_cell: dict[str, str] = {}
    for i, t in enumerate(entries):
        w = f"cells[{i}]"
        name, ap = t["name"], t["ap"]
        if name in where_of:
            ck.fail(f"{w}.name", name, f"duplicate cell (already declared at {where_of[name]})")
        _known(ck, ap, f"{w}.ap", nodes)
        if nodes[ap].kind != "ap":
            ck.fail(f"{w}.ap", ap, f"a cell's access point must be a node of kind \"ap\" (it is {nodes[ap].kind!r})")
        if ap in ap_cell:
            ck.fail(f"{w}.ap", ap, f"this access point already serves cell {ap_cell[ap]!r}")
        where_of[name] = w
        ap_cell[ap] = name
        cells.append(Cell(name, ap, **media.fields(t, w, cell=True), buffer=t["buffer"]))
    return cells


def _nodes(ck: Checker, specs: list[_NodeSpec], cells: Mapping[str, Cell], profiles: Mapping[str, float]) -> list[Node]:
    """The model's nodes: compute speed (profile, flops or the kind's default profile) and cell membership."""
    nodes = []
    for s in specs:
        profile = s.profile[0] if s.profile else None
        flops = s.flops
        if profile is None and flops is None and s.kind in DEFAULT_PROFILE_OF_KIND:
            profile = DEFAULT_PROFILE_OF_KIND[s.kind]
        if profile is not None:
            flops = profiles[profile]
        cell = None
        if s.cell is not None:
            cell, ckey = s.cell
            if cell not in cells:
                ck.fail(ckey, cell, "unknown cell" + did_you_mean(cell, list(cells))
                        + (f" (cells: {', '.join(cells)})" if cells else " (no [[cells]] declared)"))
            if cells[cell].ap == s.name:
                ck.fail(ckey, cell, "an access point is not a station of its own cell")
        nodes.append(Node(s.name, s.kind, profile, flops, cell))
    return nodes


# ------------------------------------------------------------------------------------------------ link media
class _Media:
    """Turns the validated keys of a link, an uplink or a cell (bandwidth, latency, loss, burst_loss, jitter,
    bandwidth traces, each with its _up / _down form) into the fields of `Link` / `Cell`. Trace files are read
    once each; a relative path is taken relative to `folder` (the scenario file's)."""

    def __init__(self, ck: Checker, folder: Path) -> None:
        self.ck = ck
        self.folder = folder
        self._read: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {}

    def fields(self, t: Mapping[str, Any], where: str, cell: bool = False) -> dict[str, Any]:
        ck = self.ck
        for k, ups, downs in (("bandwidth", ("bandwidth_up", "bandwidth_trace_up"),
                               ("bandwidth_down", "bandwidth_trace_down")),
                              ("latency", ("latency_up",), ("latency_down",))):
            if (f"{where}.{k}" in ck.given and any(t.get(u) is not None for u in ups)
                    and any(t.get(d) is not None for d in downs)):
                ck.fail(f"{where}.{k}", ck.given[f"{where}.{k}"], f"is not used: {k}_up and {k}_down (or their "
                        "traces) give both directions; drop it, or change those")
        period = t.get("bandwidth_trace_period")
        up, down = (self._direction(t, where, d, period) for d in ("up", "down"))
        if period is not None and up.trace is None and down.trace is None:
            ck.fail(*self._named(t, where, "bandwidth_trace_period"),
                    "repeats a capacity trace, but no bandwidth_trace is given")
        out: dict[str, Any] = {"bandwidth_bps": up.bandwidth_bps, "latency_s": up.latency_s, "loss": up.loss,
                               "trace": up.trace, "reverse": None if down == up else down,
                               "jitter_s": t.get("jitter") or 0.0}
        if cell:
            out["duplex"] = any(t.get(k) is not None for k in ("bandwidth_up", "bandwidth_down", "bandwidth_trace_up",
                                                                "bandwidth_trace_down"))
        return out

    def _direction(self, t: Mapping[str, Any], where: str, d: str, period: float | None) -> Direction:
        ck = self.ck
        if t.get("bandwidth") is not None and t.get("bandwidth_trace") is not None:
            ck.fail(f"{where}.bandwidth_trace", t["bandwidth_trace"], "give bandwidth or bandwidth_trace, not both")
        if t.get(f"bandwidth_{d}") is not None and t.get(f"bandwidth_trace_{d}") is not None:
            ck.fail(f"{where}.bandwidth_trace_{d}", t[f"bandwidth_trace_{d}"],
                    f"give bandwidth_{d} or bandwidth_trace_{d}, not both")
        key = next((k for k in (f"bandwidth_{d}", f"bandwidth_trace_{d}", "bandwidth", "bandwidth_trace")
                    if t.get(k) is not None), None)
        if key is None:
            ck.fail_key(f"{where}.bandwidth", "missing (required: each direction's capacity; or give bandwidth_up "
                        "and bandwidth_down, or a bandwidth_trace)")
        trace = self._trace(t, where, key) if "trace" in key else None
        bandwidth = trace.rates[0] if trace is not None else t[key]
        latency = t.get(f"latency_{d}")
        return Direction(bandwidth, latency if latency is not None else t.get("latency") or 0.0,
                         self._loss(t, where, d), trace)

    def _loss(self, t: Mapping[str, Any], where: str, d: str) -> Loss:
        ck = self.ck
        burst = t.get("burst_loss")
        if burst is None:
            p = t.get(f"loss_{d}")
            return Loss(p if p is not None else t.get("loss") or 0.0)
        if t.get("loss") or t.get("loss_up") is not None or t.get("loss_down") is not None:
            ck.fail(f"{where}.burst_loss", burst, "give loss (or loss_up, loss_down) or burst_loss, not both")
        for k in ("burst", "gap"):
            if burst.get(k) is None:
                ck.fail_key(f"{where}.burst_loss.{k}", "missing (required: the mean run of each state, in packets)")
        loss = Loss(burst.get("good", 0.0), burst.get("bad", 1.0), burst["burst"], burst["gap"])
        if loss.rate > MAX_LOSS:
            ck.fail(f"{where}.burst_loss", burst, f"its stationary loss rate (gap x good + burst x bad) / (burst + "
                    f"gap) = {loss.rate:.4g} is above {MAX_LOSS}")
        return loss

    def _named(self, t: Mapping[str, Any], where: str, k: str) -> tuple[str, Any]:
        """The dotted key of t's key k and its value as written: given at `where`, or in the table t inherits from
        (an override's group)."""
        for w in (where, t.get("inherits")):
            if w is not None and f"{w}.{k}" in self.ck.given:
                return f"{w}.{k}", self.ck.given[f"{w}.{k}"]
        return f"{where}.{k}", t[k]

    def _trace(self, t: Mapping[str, Any], where: str, k: str) -> CapacityTrace:
        """The capacity trace of t's key k (a bandwidth_trace key) with t's period, its file read once."""
        ck = self.ck
        value, key, period = t[k], f"{where}.{k}", t.get("bandwidth_trace_period")
        path = os.path.abspath(self.folder / Path(value).expanduser())
        shown = path if path.isprintable() else show(path)  # user input: the message must stay one line
        if path not in self._read:
            try:
                self._read[path] = read_trace(path, MIN_BANDWIDTH, MAX_BANDWIDTH, MIN_INTERVAL)
            except FileNotFoundError:
                ck.fail(key, value, f"no such trace file ({shown})")
            except IsADirectoryError:
                ck.fail(key, value, f"{shown} is a folder; give a CSV file of time_s,bandwidth_bps rows")
            except ValueError as e:
                ck.fail(key, value, f"{shown}: {e}")
            except OSError as e:
                ck.fail(key, value, f"cannot read {shown}: {e.strerror or e}")
        times, rates = self._read[path]
        if period is not None and period <= times[-1]:
            ck.fail(*self._named(t, where, "bandwidth_trace_period"), f"must exceed the trace's last time "
                    f"({times[-1]:g} s in {shown})")
        return CapacityTrace(path, times, rates, period)


# ------------------------------------------------------------------------------------------------ links
class _Links:
    """Collects links with unique names (cells share their namespace) and at most one link per pair of nodes."""

    def __init__(self, ck: Checker, cells: list[Cell]) -> None:
        self.ck = ck
        self.where: dict[str, str] = {c.name: f"cells[{i}]" for i, c in enumerate(cells)}
        self.pairs: dict[frozenset[str], str] = {}
        self.links: list[Link] = []

    def add(self, ln: Link, w: str, name_key: str) -> None:
        if ln.a == ln.b:
            self.ck.fail(f"{w}.b", ln.b, "a link needs two different ends")
        if ln.name in self.where:
            self.ck.fail(name_key, ln.name, f"duplicate link name (already used at {self.where[ln.name]})")
        pair = frozenset((ln.a, ln.b))
        if pair in self.pairs:
            self.ck.fail(w, ln.name, f"duplicate link between {ln.a} and {ln.b} (already linked at {self.pairs[pair]})")
        self.where[ln.name] = w
        self.pairs[pair] = w
        self.links.append(ln)


def _links(ck: Checker, entries: list[dict[str, Any]], specs: list[_NodeSpec], cells: list[Cell],
           media: _Media) -> list[Link]:
    """[[links]] in order, then the uplinks in node order; a station is not also linked to its access point."""
    by_name = {s.name: s for s in specs}
    acc = _Links(ck, cells)
    for i, t in enumerate(entries):
        w = f"links[{i}]"
        _known(ck, t["a"], f"{w}.a", by_name)
        _known(ck, t["b"], f"{w}.b", by_name)
        name = t["name"] or f"{t['a']}-{t['b']}"
        acc.add(Link(name, t["a"], t["b"], **media.fields(t, w), buffer=t["buffer"]), w, f"{w}.name")
    for s in specs:
        if s.uplink is not None:
            up = s.uplink
            to, tokey = up["to"]
            _known(ck, to, tokey, by_name)
            ln = Link(up["name"] or f"{s.name}-{to}", s.name, to, **media.fields(up, up["key"]),
                      buffer=up.get("buffer"))
            acc.add(ln, up["key"], f"{up['key']}.name")
    ap_of = {c.name: c.ap for c in cells}
    for s in specs:
        if s.cell is not None and frozenset((s.name, ap_of[s.cell[0]])) in acc.pairs:
            ck.fail(s.cell[1], s.cell[0], f"{s.name} is already linked to this cell's access point at "
                    f"{acc.pairs[frozenset((s.name, ap_of[s.cell[0]]))]}; use either the cell or the link")
    return acc.links


def _servers(ck: Checker, specs: list[_NodeSpec]) -> list[_NodeSpec]:
    servers = [s for s in specs if s.kind in SERVER_KINDS]
    if len(servers) > 1:
        ck.fail(servers[1].key, servers[1].name, f"at most one node of kind server/cloud (already have "
                f"{servers[0].name!r} from {servers[0].key})")
    return servers


def _connected(ck: Checker, specs: list[_NodeSpec], nodes: list[Node], links: list[Link], cells: list[Cell]) -> None:
    """Every client and the server reachable from the server (else the first client) over links and cells."""
    g = nx.Graph()
    g.add_nodes_from(n.name for n in nodes)
    g.add_edges_from((ln.a, ln.b) for ln in links)
    ap_of = {c.name: c.ap for c in cells}
    g.add_edges_from((n.name, ap_of[n.cell]) for n in nodes if n.cell is not None)
    must = [s for s in specs if s.kind == "client" or s.kind in SERVER_KINDS]
    if not must:
        return
    ref = next((s.name for s in must if s.kind in SERVER_KINDS), must[0].name)
    reach = nx.node_connected_component(g, ref)
    for s in must:
        if s.name not in reach:
            ck.fail(s.key, s.name, f"{s.kind} {s.name} is disconnected: no chain of links or cells connects it to "
                    f"{ref} (give it an uplink, a cell or a [[links]] entry)")


# ------------------------------------------------------------------------------------------------ experiment
def _experiment(ck: Checker, e: dict[str, Any]) -> Experiment:
    p, classes = e["clients_per_class"], e["classes"]
    if e["clients"] is not None and e["clients"] != p * len(classes):
        ck.fail("experiment.clients", e["clients"], f"must equal clients_per_class x len(classes) = {p} x "
                f"{len(classes)} = {p * len(classes)} (or leave it out)")
    e = dict(e, data_dir=e["data_dir"] or None)
    _shards(ck, e)
    return Experiment(**e)


def _shards(ck: Checker, e: Mapping[str, Any]) -> None:
    """Every client keeps a training sample: a shard cap that the validation split empties, or shards that
    Fashion-MNIST's 6,000 training images per class cannot fill (exact for "balanced"; for "authors" only where
    every draw fails, the rest is checked when the draw is made)."""
    val, cap, p = e["val_fraction"], e["max_samples_per_client"], e["clients_per_class"]
    need = data.min_shard(val)
    if cap is not None and cap < need:
        ck.fail("experiment.max_samples_per_client", cap, f"leaves no training sample: with val_fraction = {val} "
                f"a client needs at least {need} samples")
    smallest = data.smallest_shard(len(e["classes"]), p, e["outlier_fraction"], e["split"])
    if smallest < need:
        what = "exactly" if e["split"] == "balanced" else "at best"
        ck.fail("experiment.clients_per_class", p, f"too many clients per class for split \"{e['split']}\": "
                f"{data.TRAIN_PER_CLASS:,} training images per class leave the smallest shard {what} {smallest} "
                f"samples, and with val_fraction = {val} a client needs at least {need} to train")


def _synthetic(ck: Checker, t: dict[str, Any], nodes: Mapping[str, Any], clients: list[str],
               server: str | None) -> SyntheticParams:
    if t["target"] is not None:
        _known(ck, t["target"], "synthetic.target", nodes)
        return SyntheticParams(**t)
    return SyntheticParams(**dict(t, target=server if server is not None else (clients[0] if clients else None)))


def _workload_needs(ck: Checker, workload: str, exp: Experiment, clients: list[str], server: str | None) -> None:
    if workload == "synthetic" and not clients:
        ck.fail_key("nodes", "workload \"synthetic\" needs at least one client node")
    if workload != "fedad":
        return
    n = exp.n_clients
    if len(clients) < n:
        ck.fail("experiment.clients_per_class", exp.clients_per_class,
                f"workload \"fedad\" needs n = clients_per_class x len(classes) = {exp.clients_per_class} x "
                f"{len(exp.classes)} = {n} client nodes; the scenario has {len(clients)}")
    if exp.aggregator == "server" and server is None:
        ck.fail("experiment.aggregator", "server", "needs a node of kind server or cloud; the scenario has none")
    if "centralised" in exp.baselines and server is None:
        ck.fail("experiment.baselines", list(exp.baselines), "the \"centralised\" baseline needs a node of kind "
                "server or cloud; the scenario has none (drop it from baselines or add a server)")
    missing = data.missing_files(Path(exp.data_dir).expanduser()) if exp.data_dir else []
    if missing:
        ck.fail("experiment.data_dir", exp.data_dir, f"this folder lacks the Fashion-MNIST file(s) "
                f"{', '.join(missing)}; point experiment.data_dir at a folder holding the four IDX .gz files "
                f"({', '.join(data.FILES.values())})")


CRASHING_KINDS = ("client", "server", "cloud")  # a fedad run's nodes whose [[faults]] are crashes


def crash_faults(workload: str, nodes: Iterable[Node], faults: Iterable[Fault]) -> list[Fault]:
    """The faults that are node crashes: in a fedad run, a client's or a server's single outage (`down`, optional
    `up`: its processes stop; see docs/network-aware-learning.md); every other fault, a node's repeating schedule
    included (e.g. leaving radio coverage), is an outage of links (`simfl.faults`)."""
    if workload != "fedad":
        return []
    kinds = {n.name: n.kind for n in nodes}
    return [f for f in faults if f.target == "node" and f.every is None and kinds.get(f.name) in CRASHING_KINDS]


def _conditions(ck: Checker, exp: Experiment, crashes: list[Fault], faults: list[Fault],
                network: NetworkParams) -> None:
    """The round conditions and crashes leave no wait without an end (docs/network-aware-learning.md)."""
    if exp.dropout > 0 and exp.round_deadline is None:
        ck.fail("experiment.dropout", exp.dropout, "needs experiment.round_deadline (a round would wait for ever "
                "for a client that sits it out)")
    if exp.phase1_deadline is not None and exp.round_deadline is None:
        ck.fail("experiment.phase1_deadline", ck.given["experiment.phase1_deadline"], "needs "
                "experiment.round_deadline (a client that became a loner at the deadline would leave its community's "
                "aggregator waiting for ever)")
    if exp.failover_timeout is not None:
        if exp.round_deadline is None:
            ck.fail("experiment.failover_timeout", ck.given["experiment.failover_timeout"], "needs "
                    "experiment.round_deadline (a suspected aggregator would wait for ever for the members that left)")
        if exp.failover_timeout <= exp.round_deadline:
            ck.fail("experiment.failover_timeout", ck.given["experiment.failover_timeout"], "must exceed "
                    f"experiment.round_deadline ({show(ck.given['experiment.round_deadline'])}), or a live aggregator "
                    "is suspected in every round")
    seen: dict[str, list[tuple[float, float]]] = {}
    for f in crashes:
        w = f"faults[{faults.index(f)}]"
        need = [k for k in ("round_deadline", "phase1_deadline", "failover_timeout") if getattr(exp, k) is None]
        if need:
            ck.fail(f"{w}.node", f.name, f"a crash of {f.name} needs experiment.{', experiment.'.join(need)} "
                    "(a wait for a crashed node would never end)")
        for a, b in seen.get(f.name, []):
            if f.down < b and a < f.up:
                ck.fail_key(w, f"overlaps another crash of {f.name} (from {a:g} s)")
        seen.setdefault(f.name, []).append((f.down, f.up))


# ------------------------------------------------------------------------------------------------ memory
def estimated_messages(workload: str, n_clients: int, rounds: int, patterns: Iterable[str]) -> int:
    """Messages a run sends, about: synthetic all-pairs n (n - 1), gather and broadcast n each; fedad 2 n (n - 1)
    in phase I (models and association bits), 2 n per FedAvg round for the method and again for the ideal
    baseline, and 2 n for the candidate groups, communities and centralised upload."""
    n = n_clients
    if workload == "synthetic":
        return sum(n * (n - 1) if p == "allpairs" else n for p in patterns)
    return 2 * n * (n - 1) + 4 * n * rounds + 2 * n


def physical_memory() -> int:
    """This machine's memory in bytes."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _memory(ck: Checker, v: Mapping[str, Any]) -> None:
    """Refuse a run whose messages would not fit in memory (before building its nodes)."""
    workload, exp = v["workload"], v["experiment"]
    clients = sum(t["kind"] == "client" for t in v["nodes"]) + sum(t["count"] for t in v["node_groups"]
                                                                    if t["kind"] == "client")
    n = exp["clients_per_class"] * len(exp["classes"]) if workload == "fedad" else clients
    m = estimated_messages(workload, n, exp["rounds"], v["synthetic"]["pattern"])
    need, have = m * MESSAGE_BYTES_IN_MEMORY, physical_memory()
    if need > have:
        ck.fail("workload", workload, f"{n:,} clients send about {m:,} messages, which need about "
                f"{need / 2**30:,.1f} GiB of memory ({MESSAGE_BYTES_IN_MEMORY:,} bytes each); this machine has "
                f"{have / 2**30:,.1f} GiB: use fewer clients (or patterns)")


# ------------------------------------------------------------------------------------------------ scenario
def scenario_from_dict(d: Mapping[str, Any], source: str | Path = "<dict>") -> Scenario:
    """Validate a scenario given as a TOML-like dict (e.g. built in code) and return the frozen Scenario."""
    src = str(source)
    ck = Checker(src)
    if not isinstance(d, Mapping):
        raise ScenarioError(f"{src}: a scenario must be a table")
    v = ck.table(SCENARIO, d, "")
    if v["extends"] is not None:
        ck.fail("extends", v["extends"], "extends is resolved by load_scenario (files only)")
    _memory(ck, v)
    network = _network(ck, v["network"])
    profiles = {**DEFAULT_PROFILES, **v["profiles"]}
    specs = _node_specs(ck, v, profiles)
    by_name = {s.name: s for s in specs}
    media = _Media(ck, Path(src).parent if src != "<dict>" else Path.cwd())
    cells = _cells(ck, v["cells"], by_name, media)
    nodes = _nodes(ck, specs, {c.name: c for c in cells}, profiles)
    links = _links(ck, v["links"], specs, cells, media)
    servers = _servers(ck, specs)
    _connected(ck, specs, nodes, links, cells)
    traffic = _traffic(ck, v["traffic"], nodes, links, cells, network)
    faults = _faults(ck, v["faults"], {"link": [ln.name for ln in links], "cell": [c.name for c in cells],
                                       "node": [n.name for n in nodes]})
    experiment = _experiment(ck, v["experiment"])
    clients = [n.name for n in nodes if n.kind == "client"]
    server = servers[0].name if servers else None
    synthetic = _synthetic(ck, v["synthetic"], by_name, clients, server)
    _workload_needs(ck, v["workload"], experiment, clients, server)
    _conditions(ck, experiment, crash_faults(v["workload"], nodes, faults), faults, network)
    return Scenario(
        name=v["name"] or (Path(src).stem if src != "<dict>" else "scenario"),
        description=v["description"],
        seed=v["seed"],
        workload=v["workload"],
        nodes=tuple(nodes),
        links=tuple(links),
        cells=tuple(cells),
        profiles=tuple(sorted(profiles.items())),
        network=network,
        experiment=experiment,
        synthetic=synthetic,
        faults=tuple(faults),
        traffic=tuple(traffic),
        source=Path(src) if src != "<dict>" else None,
    )


def _faults(ck: Checker, entries: list[dict[str, Any]], known: Mapping[str, list[str]]) -> list[Fault]:
    """[[faults]]: exactly one of link, cell, node, naming one that exists; then its schedule."""
    out = []
    for i, t in enumerate(entries):
        w = f"faults[{i}]"
        given = [k for k in FAULT_TARGETS if t[k] is not None]
        if len(given) != 1:
            ck.fail_key(w, "give exactly one of link, cell and node" + (f" (got {', '.join(given)})" if given else ""))
        target = given[0]
        name = t[target]
        if name not in known[target]:
            names = known[target]
            ck.fail(f"{w}.{target}", name, f"unknown {target}" + did_you_mean(name, names, cutoff=0.5)
                    + (f" ({target}s: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''})" if names else
                       f" (the scenario has no {target}s)"))
        out.append(_schedule(ck, t, w, target, name))
    return out


def _schedule(ck: Checker, t: Mapping[str, Any], w: str, target: str, name: str) -> Fault:
    """One outage (down, up) or repeating ones (every, duration, start, until), checked."""
    once = t["down"] is not None or t["up"] is not None
    repeat = any(t[k] is not None for k in ("every", "duration", "start", "until"))
    if once and repeat:
        ck.fail_key(w, "give down and up (one outage) or every, duration, start and until (repeating outages), "
                    "not both")
    if once:
        if t["down"] is None:
            ck.fail_key(f"{w}.down", "missing (required: when the outage begins)")
        if t["up"] is not None and t["up"] <= t["down"]:
            ck.fail(f"{w}.up", ck.given[f"{w}.up"], f"must be later than down ({show(ck.given[f'{w}.down'])})")
        return Fault(target, name, t["down"], t["up"] if t["up"] is not None else math.inf)
    if not repeat:
        ck.fail_key(w, "give down (and up) for one outage, or every and duration for repeating outages")
    for k in ("every", "duration"):
        if t[k] is None:
            ck.fail_key(f"{w}.{k}", "missing (required for repeating outages: every and duration)")
    if t["duration"] >= t["every"]:
        ck.fail(f"{w}.duration", ck.given[f"{w}.duration"], f"must be shorter than every "
                f"({show(ck.given[f'{w}.every'])}), else the outages never end")
    start = t["start"] if t["start"] is not None else 0.0
    if t["until"] is not None and t["until"] <= start:
        ck.fail(f"{w}.until", ck.given[f"{w}.until"], f"must be later than start ({units.format_time(start)})")
    return Fault(target, name, start, every=t["every"], duration=t["duration"],
                 until=t["until"] if t["until"] is not None else math.inf)


def _traffic(ck: Checker, entries: list[dict[str, Any]], nodes: list[Node], links: list[Link], cells: list[Cell],
             network: NetworkParams) -> list[Traffic]:
    """[[traffic]]: unique names, known and connected distinct ends, the keys of its kind (and only those), a stop
    after the start, frames at most one a microsecond (what the ns3 backend cannot carry, it refuses itself)."""
    out: list[Traffic] = []
    where_of: dict[str, str] = {}
    names = {n.name: n for n in nodes}
    g = nx.Graph()
    g.add_nodes_from(names)
    g.add_edges_from((ln.a, ln.b) for ln in links)
    g.add_edges_from((n.name, c.ap) for c in cells for n in nodes if n.cell == c.name)
    for i, t in enumerate(entries):
        w = f"traffic[{i}]"
        if t["name"] in where_of:
            ck.fail(f"{w}.name", t["name"], f"duplicate traffic flow (already declared at {where_of[t['name']]})")
        where_of[t["name"]] = w
        _known(ck, t["src"], f"{w}.src", names)
        _known(ck, t["dst"], f"{w}.dst", names)
        if t["src"] == t["dst"]:
            ck.fail(f"{w}.dst", t["dst"], "a flow needs two different nodes (dst is its src)")
        if not nx.has_path(g, t["src"], t["dst"]):
            ck.fail(f"{w}.dst", t["dst"], f"no chain of links or cells connects {t['src']} to {t['dst']}")
        out.append(_flow(ck, t, w, network))
    _frames_fit(ck, out)
    return out


def _frames_fit(ck: Checker, flows: list[Traffic]) -> None:
    """Refuse background flows whose frames (known where a flow has a stop; both runs keep theirs) would not fit in
    memory at MESSAGE_BYTES_IN_MEMORY each."""
    frames = []
    for f in flows:
        if f.stop is None:
            frames.append(0)
        elif f.gap is None:
            frames.append(1)
        else:
            cycle, per_cycle = (f.on + f.off, math.ceil(f.on / f.gap)) if f.kind == "onoff" else (f.gap, 1)  # type: ignore[operator]
            frames.append(math.ceil((f.stop - f.start) / cycle) * per_cycle)
    need, have = 2 * sum(frames) * MESSAGE_BYTES_IN_MEMORY, physical_memory()
    if frames and need > have:
        i = max(range(len(frames)), key=frames.__getitem__)
        ck.fail(f"traffic[{i}].stop", ck.given[f"traffic[{i}].stop"], f"the background flows send about "
                f"{sum(frames):,} frames, which need about {need / 2**30:,.1f} GiB of memory in the two runs "
                f"({MESSAGE_BYTES_IN_MEMORY:,} bytes each); this machine has {have / 2**30:,.1f} GiB: stop sooner "
                "or send larger frames less often")


def _flow(ck: Checker, t: dict[str, Any], w: str, network: NetworkParams) -> Traffic:
    """One [[traffic]] entry's per-kind keys, checked and resolved."""
    kind = t["kind"]
    used = TRAFFIC_KEYS[kind]
    for k in sorted({k for keys in TRAFFIC_KEYS.values() for k in keys} - set(used)):
        if t[k] is not None:
            ck.fail(f"{w}.{k}", ck.given.get(f"{w}.{k}", t[k]), f"is not used by kind \"{kind}\" (its keys: "
                    f"{', '.join(used)})")
    for k in used:
        if t[k] is None and k not in ("packet", "every"):
            ck.fail_key(f"{w}.{k}", f"missing (required by kind \"{kind}\": {', '.join(used)})")
    if t["stop"] is not None and t["stop"] <= t["start"]:
        ck.fail(f"{w}.stop", ck.given[f"{w}.stop"], f"must be later than start ({units.format_time(t['start'])})")
    packet = t["packet"]
    if kind in ("cbr", "onoff") and packet is None:
        packet = network.mtu - network.ip_header_bytes
    flow = Traffic(t["name"], t["src"], t["dst"], kind, t["priority"],
                   t["transport"] or ("tcp" if kind == "bulk" else "datagram"), t["start"], t["stop"], t["rate"],
                   packet, t["bytes"], t["period"], t["on"], t["off"], t["every"])
    gap = flow.gap
    if kind in ("cbr", "onoff") and gap < MIN_INTERVAL:  # type: ignore[operator]
        ck.fail(f"{w}.rate", ck.given[f"{w}.rate"], f"sends a frame of {packet:,} bytes every {gap:.3g} s; "
                f"frames must be at least {units.format_time(MIN_INTERVAL)} apart: give a larger packet")
    if kind == "onoff" and t["on"] < gap:
        ck.fail(f"{w}.on", ck.given[f"{w}.on"], f"is shorter than the gap between two frames at this rate "
                f"({units.format_time(gap)}: {packet:,} bytes at {units.format_rate(t['rate'])}), so each on period "  # type: ignore[arg-type]
                "would send one frame, faster than the rate; give a longer on, a higher rate or a smaller packet")
    return flow


def _network(ck: Checker, t: dict[str, Any]) -> NetworkParams:
    if t["mtu"] <= t["ip_header_bytes"]:
        ck.fail("network.mtu", t["mtu"], f"mtu must exceed ip_header_bytes ({t['ip_header_bytes']})")
    return NetworkParams(**t)


# ---------------------------------------------------------------------------------------------- overrides / load
_SEG = re.compile(r"^([^.\[\]]+)((?:\[(?:\d+|\*)\])*)$")


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _split_key(key: str) -> list[tuple[str, list[Any]]] | None:
    out = []
    for part in key.split("."):
        m = _SEG.match(part.strip())
        if not m:
            return None
        out.append((m.group(1), [x if x == "*" else int(x) for x in re.findall(r"\[(\d+|\*)\]", m.group(2))]))
    return out


def apply_overrides(d: dict[str, Any], overrides: Iterable[str], source: str = "<dict>") -> dict[str, Any]:
    """Apply `KEY=VALUE` overrides (dotted keys, `[i]` for array entries, `[*]` for every entry) to the TOML dict
    `d` in place. VALUE is read as a TOML value (`3`, `true`, `[1, 2]`, `"x"`) and otherwise kept as a string.
    An override of a loss key (loss, loss_up, loss_down) replaces the table's burst_loss, and one of burst_loss its
    loss keys: the override gives the loss model."""
    for item in overrides:
        if "=" not in item:
            raise ScenarioError(f"{source}: --set {_one_line(item)}: expected KEY=VALUE, e.g. "
                                "--set experiment.rounds=3")
        key, raw = item.split("=", 1)
        head = f"{source}: --set {_one_line(key.strip())}={_one_line(raw)}"
        value = _parse_value(raw.strip())
        for k in _expand(d, key.strip(), head):
            _set(d, k, value, head)
    return d


def _expand(d: dict[str, Any], key: str, head: str) -> list[str]:
    """The keys that `key` names: itself, or with `[*]` one key per entry of that array (in order)."""
    if "[*]" not in key:
        return [key]
    segs = _split_key(key)
    if not segs:
        return [key]  # _set says what is wrong with it
    found: list[tuple[str, Any]] = [("", d)]
    for name, idxs in segs:
        step = []
        for where, node in found:
            items = [(join(where, name), node.get(name) if isinstance(node, dict) else None)]
            for idx in idxs:
                nxt = []
                for w, arr in items:
                    if idx != "*":
                        nxt.append((f"{w}[{idx}]", arr[idx] if isinstance(arr, list) and idx < len(arr) else None))
                    elif not isinstance(arr, list) or not arr:
                        raise ScenarioError(f"{head}: {w} has no entries")
                    else:
                        nxt += [(f"{w}[{i}]", a) for i, a in enumerate(arr)]
                items = nxt
            step += items
        found = step
    return [w for w, _ in found]


def _one_line(s: str) -> str:
    """`s` with control characters escaped ("\\n"), for messages."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], s)


def _sub(spec: Any, name: str, where: str, head: str) -> Any:
    """The schema entry `name` inside `spec` (a table, array or map), or an error listing the keys there."""
    if isinstance(spec, Array):
        spec = spec.table
    if isinstance(spec, Map):
        return spec.value
    if not isinstance(spec, Table):
        raise ScenarioError(f"{head}: {where} is a value, not a table")
    e = spec.entry(name)
    if e is None:
        place = f"[{where}]" if where else "the top level"
        raise ScenarioError(f"{head}: unknown key {name!r} in {place}{did_you_mean(name, spec.names, 0.5)} "
                            f"(keys there: {', '.join(spec.names)})")
    return e


def _set(d: dict[str, Any], key: str, value: Any, head: str) -> None:
    segs = _split_key(key)
    if not segs:
        raise ScenarioError(f"{head}: cannot read the key (write it like experiment.rounds or links[0].bandwidth)")
    node: Any = d
    spec: Any = SCENARIO
    where = ""
    for i, (name, idxs) in enumerate(segs):
        spec = _sub(spec, name, where, head)
        where = join(where, name)
        if not isinstance(node, dict):
            raise ScenarioError(f"{head}: {where} is not a table in the scenario")
        last = i == len(segs) - 1
        if not idxs:
            if last:
                node[name] = value
                for k in _REPLACES.get(name, ()):  # the override gives the loss model, the capacity
                    node.pop(k, None)
                _drop_orphan_period(node, (name,))
                return
            node = node.setdefault(name, {})
            continue
        node, where = _index(node, name, idxs, where, head, value if last else None)
        if last:
            return


def _index(node: dict[str, Any], name: str, idxs: list[int], where: str, head: str, value: Any) -> tuple[Any, str]:
    """Walk `node[name][i][j]...`; with a `value`, set the last entry to it."""
    arr = node.get(name)
    for k, idx in enumerate(idxs):
        if arr is None or arr == []:
            raise ScenarioError(f"{head}: {where} has no entries")
        if not isinstance(arr, list):
            raise ScenarioError(f"{head}: {where} is not a list in the scenario")
        if idx >= len(arr):
            raise ScenarioError(f"{head}: {where} has {len(arr)} entries (indices 0..{len(arr) - 1})")
        if value is not None and k == len(idxs) - 1:
            arr[idx] = value
            return arr, where
        where = f"{where}[{idx}]"
        arr = arr[idx]
    return arr, where


def _read_toml(p: Path, src: str) -> dict[str, Any]:
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError(f"{src}: no such scenario file") from None
    except IsADirectoryError:
        raise ScenarioError(f"{src}: is a directory, not a scenario file") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{src}: not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScenarioError(f"{src}: cannot read: {e}") from None


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _resolve_extends(d: dict[str, Any], p: Path, src: str, seen: tuple[Path, ...]) -> dict[str, Any]:
    """`extends = "other.toml"` (relative to this file): start from that scenario, then apply this file's keys
    (tables merge key by key, everything else, arrays included, replaces)."""
    if "extends" not in d:
        return d
    ext = d.pop("extends")
    if not isinstance(ext, str):
        raise ScenarioError(f"{src}: extends = {show(ext)}: expected the path of another scenario file")
    bp = (p.parent / ext).resolve()
    if bp in seen:
        raise ScenarioError(f"{src}: extends = {show(ext)}: scenarios extend each other in a cycle")
    if not bp.is_file():
        raise ScenarioError(f"{src}: extends = {show(ext)}: no such file ({bp})")
    base = _anchor_traces(_resolve_extends(_read_toml(bp, str(bp)), bp, str(bp), (*seen, bp)), bp.parent)
    base.pop("name", None)
    base.pop("description", None)
    return _merge(base, d)


def _anchor_traces(d: Any, folder: Path) -> Any:
    """Capacity trace paths in `d` (a scenario dict, walked through) made relative to `folder` where they are
    relative: a file that extends another keeps the traces that file names."""
    if isinstance(d, list):
        return [_anchor_traces(x, folder) for x in d]
    if not isinstance(d, dict):
        return d
    out = {}
    for k, v in d.items():
        if isinstance(v, str) and k in _TRACE_KEYS and not Path(v).expanduser().is_absolute():
            v = os.path.abspath(folder / Path(v).expanduser())
        out[k] = _anchor_traces(v, folder)
    return out


_TRACE_KEYS = ("bandwidth_trace", "bandwidth_trace_up", "bandwidth_trace_down")


def load_scenario(path: str | Path, overrides: Iterable[str] = (), seed: int | None = None) -> Scenario:
    """Read, override (`--set`), re-seed and validate a scenario file."""
    p = Path(path)
    src = _one_line(str(path))
    d = _resolve_extends(_read_toml(p, src), p, src, (p.resolve(),))
    apply_overrides(d, overrides, src)
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise ScenarioError(f"{src}: --seed {seed}: the seed must be an integer in 0 .. {MAX_SEED} (2^32 - 1)")
        d["seed"] = seed
    return scenario_from_dict(d, source=src)


# ------------------------------------------------------------------------------------------------- TOML writer
def _scenario_to_dict(sc: Scenario) -> dict[str, Any]:
    """The resolved scenario as a TOML dict: quantities with units, unset values left out."""
    def kept(obj: Any) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(obj).items()
                if v is not None}

    nodes = []
    for n in sc.nodes:
        t: dict[str, Any] = {"name": n.name, "kind": n.kind}
        if n.profile is not None:
            t["profile"] = n.profile
        elif n.flops is not None:
            t["flops"] = units.format_flops(n.flops)
        if n.cell is not None:
            t["cell"] = n.cell
        nodes.append(t)
    out: dict[str, Any] = {
        "name": sc.name, "description": sc.description, "seed": sc.seed, "workload": sc.workload,
        "network": kept(sc.network),
        "profiles": {k: units.format_flops(f) for k, f in sc.profiles},
        "nodes": nodes,
        "links": [_buffered({"name": ln.name, "a": ln.a, "b": ln.b, **_medium_dict(ln, False)}, ln.buffer)
                  for ln in sc.links],
        "cells": [_buffered({"name": c.name, "ap": c.ap, **_medium_dict(c, c.duplex)}, c.buffer) for c in sc.cells],
        "faults": [_fault_dict(f) for f in sc.faults],
        "traffic": [_traffic_dict(f) for f in sc.traffic],
        "experiment": kept(sc.experiment),
        "synthetic": kept(sc.synthetic),
    }
    return {k: v for k, v in out.items() if v != []}


def _buffered(t: dict[str, Any], buffer: int | None) -> dict[str, Any]:
    """A link or cell table with its buffer, where one was given."""
    return t if buffer is None else {**t, "buffer": buffer}


def _medium_dict(m: Link | Cell, duplex: bool) -> dict[str, Any]:
    """The keys of a link or cell as TOML values: symmetric keys where both directions agree."""
    up, down = m.up, m.down
    out: dict[str, Any] = {}

    def capacity(d: Direction) -> tuple[str, str]:
        return ("bandwidth_trace", d.trace.path) if d.trace else ("bandwidth", units.format_rate(d.bandwidth_bps))

    if not duplex and (up.bandwidth_bps, up.trace) == (down.bandwidth_bps, down.trace):
        out.update([capacity(up)])
    else:
        out.update((f"{k}_{way}", v) for way, d in (("up", up), ("down", down)) for k, v in [capacity(d)])
    if up.latency_s == down.latency_s:
        out["latency"] = units.format_time(up.latency_s)
    else:
        out["latency_up"], out["latency_down"] = units.format_time(up.latency_s), units.format_time(down.latency_s)
    if up.loss.bursty:
        out["burst_loss"] = {"good": up.loss.good, "bad": up.loss.bad, "burst": up.loss.burst, "gap": up.loss.gap}
    elif up.loss != down.loss:
        out["loss_up"], out["loss_down"] = up.loss.good, down.loss.good
    elif up.loss.good:
        out["loss"] = up.loss.good
    if m.jitter_s:
        out["jitter"] = units.format_time(m.jitter_s)
    period = next((d.trace.period for d in (up, down) if d.trace is not None), None)
    if period is not None:
        out["bandwidth_trace_period"] = units.format_time(period)
    return out


def _traffic_dict(f: Traffic) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in dataclasses.asdict(f).items():
        if v is None:
            continue
        if k in ("start", "stop", "period", "on", "off", "every"):
            v = units.format_time(v)
        elif k == "rate":
            v = units.format_rate(v)
        out[k] = v
    return out


def _fault_dict(f: Fault) -> dict[str, Any]:
    out: dict[str, Any] = {f.target: f.name}
    if f.every is None:
        out["down"] = units.format_time(f.down)
        if math.isfinite(f.up):
            out["up"] = units.format_time(f.up)
        return out
    out.update(every=units.format_time(f.every), duration=units.format_time(f.duration),
               start=units.format_time(f.down))
    if math.isfinite(f.until):
        out["until"] = units.format_time(f.until)
    return out
