"""Scenario files: the TOML schema, `--set` overrides and validation.

A scenario is a TOML file (see `topologies/`). `load_scenario` reads it, applies `--set KEY=VALUE` overrides to the
TOML dict, validates everything by hand and returns a frozen `Scenario`. Every mistake raises one `ScenarioError`
whose message names the file, the dotted key and the bad value, e.g.

    topologies/x.toml: links[2].bandwidth = "-5 Mbps": bandwidth must be positive

Schema (all tables optional except that a scenario needs nodes):

    name, description, seed, workload              top-level keys ("fedad" | "synthetic")
    extends                                        another scenario file (relative path) this one starts from:
                                                   its tables merge key by key, other values (arrays too) replace
    [network]        mtu, ip_header_bytes, link_header_bytes, headers
    [profiles]       <profile> = "<speed>"   (built in: edge = 10 GFLOP/s, server = 1 TFLOP/s)
    [[nodes]]        name, kind, profile | flops, uplink = {to, bandwidth, latency, name}, cell
    [[node_groups]]  prefix, count, start, kind, profile | flops, uplink, cell   -> <prefix>00 .. <prefix>NN
    [node_overrides.<node>]  profile | flops, uplink (partial: any of to, bandwidth, latency, name), cell
    [[links]]        a, b, bandwidth, latency, name       (full duplex: each direction has the bandwidth)
    [[cells]]        name, ap, bandwidth, latency         (shared medium: all its stations share bandwidth)
    [experiment]     see `Experiment`
    [synthetic]      message_bytes, pattern, target

Declaration order (it fixes the client IDs): the [[nodes]] entries in order, then each [[node_groups]] entry's nodes.
Generated names are zero-padded to the width of the largest index: count = 90 gives c00 .. c89.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from simfl import units
from simfl.errors import SimflError

__all__ = [
    "ScenarioError",
    "Scenario",
    "Node",
    "Link",
    "Cell",
    "NetworkParams",
    "SyntheticParams",
    "Experiment",
    "DEFAULT_SCENARIO",
    "DEFAULT_PROFILES",
    "NODE_KINDS",
    "load_scenario",
    "scenario_from_dict",
    "apply_overrides",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCENARIO = REPO_ROOT / "topologies" / "default.toml"

NODE_KINDS = ("client", "switch", "ap", "gateway", "server", "cloud")
SERVER_KINDS = ("server", "cloud")
# Compute speeds used when a scenario does not redefine them (FLOP/s). Sources are in topologies/*.toml comments:
# edge ~ a Raspberry-Pi-4-class quad-core ARM board, server ~ a multi-core x86 server CPU at a fraction of peak.
DEFAULT_PROFILES: dict[str, float] = {"edge": 10e9, "server": 1e12}
DEFAULT_PROFILE_OF_KIND = {"client": "edge", "server": "server", "cloud": "server"}
WORKLOADS = ("fedad", "synthetic")
PATTERNS = ("allpairs", "gather", "broadcast")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class ScenarioError(SimflError):
    """A scenario file (or override) that is malformed or inconsistent."""


# ----------------------------------------------------------------------------------------------- the frozen model
@dataclass(frozen=True)
class NetworkParams:
    mtu: int = 1500
    ip_header_bytes: int = 40
    link_header_bytes: int = 38
    headers: bool = True

    @property
    def header_bytes(self) -> int:
        """Header bytes added per packet (0 in header-less mode)."""
        return self.ip_header_bytes + self.link_header_bytes if self.headers else 0


@dataclass(frozen=True)
class Node:
    name: str
    kind: str
    profile: str | None = None
    flops: float | None = None  # FLOP/s (from the profile or given directly); None for pure network devices
    cell: str | None = None


@dataclass(frozen=True)
class Link:
    """A full-duplex point-to-point link: each direction has `bandwidth_bps` and `latency_s` of its own."""

    name: str
    a: str
    b: str
    bandwidth_bps: float
    latency_s: float


@dataclass(frozen=True)
class Cell:
    """A shared medium (a WiFi cell): every station-AP hop of the cell, in either direction, shares one channel."""

    name: str
    ap: str
    bandwidth_bps: float
    latency_s: float


@dataclass(frozen=True)
class SyntheticParams:
    message_bytes: int = 12868
    pattern: tuple[str, ...] = ("allpairs",)
    target: str | None = None  # resolved: the server, else the first client


# What each client detects with after FedAvg: "global" = its community's final average (sent to it after the
# last round); "last_fit" = its own last local fit, as the authors' code leaves it (Flower with evaluation off:
# the aggregator sends the initial model and each average before the next round, never the last one).
DETECTORS = ("global", "last_fit")
# How the clients' shards and the test sets are drawn (simfl.data): "balanced" = the authors' scheme with evenly
# mixed outliers and exact per-class shares; "authors" = their code's own draw (with split_seed 42: their data).
SPLITS = ("balanced", "authors")


@dataclass(frozen=True)
class Experiment:
    """The [experiment] table. Lists are held as tuples (the dataclass is frozen)."""

    classes: tuple[int, ...] = tuple(range(10))
    clients_per_class: int = 9
    clients: int | None = None
    outlier_fraction: float = 0.1
    split: str = "balanced"  # how shards and test sets are drawn: "balanced" or "authors" (simfl.data)
    split_seed: int | None = None  # the draw's seed; None: the run's seed (the authors' is 42)
    max_samples_per_client: int | None = None  # cut each shard to its first N samples (quick runs); None: all
    tau: float = 0.06
    community_method: str = "leiden"
    phase1_model: str = "ae5"
    phase1_epochs: int = 100
    phase2_model: str = "ae7"
    rounds: int = 10
    local_epochs: tuple[int, ...] = (1, 10)
    local_baseline_epochs: int = 40
    patience: int = 3
    restore_best: bool = False
    centralised_epochs: int = 10
    aggregator: str = "member"
    batch_size: int = 32
    lr: float = 1e-3
    val_fraction: float = 0.1
    persist_optimizer: bool = True
    detector: str = "global"
    baselines: tuple[str, ...] = ("local", "ideal", "centralised")
    data_dir: str | None = None
    device: str = "auto"
    workers: int = 2
    preset_note: str = ""

    @property
    def n_clients(self) -> int:
        """n = clients_per_class * len(classes)."""
        return self.clients_per_class * len(self.classes)

    def epochs_in_round(self, i: int) -> int:
        """Local epochs in round i (0-based): local_epochs[min(i, len - 1)]."""
        return self.local_epochs[min(i, len(self.local_epochs) - 1)]


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
        return _scenario_to_toml(self)


# ------------------------------------------------------------------------------------------------ schema (keys)
LEAF = None
_UPLINK = {"to": LEAF, "bandwidth": LEAF, "latency": LEAF, "name": LEAF}
_NODE = {"name": LEAF, "kind": LEAF, "profile": LEAF, "flops": LEAF, "uplink": _UPLINK, "cell": LEAF}
_GROUP = {"prefix": LEAF, "count": LEAF, "start": LEAF, "kind": LEAF, "profile": LEAF, "flops": LEAF,
          "uplink": _UPLINK, "cell": LEAF}
_OVERRIDE = {"profile": LEAF, "flops": LEAF, "uplink": _UPLINK, "cell": LEAF}
_LINK = {"name": LEAF, "a": LEAF, "b": LEAF, "bandwidth": LEAF, "latency": LEAF}
_CELL = {"name": LEAF, "ap": LEAF, "bandwidth": LEAF, "latency": LEAF}
_NETWORK = {f.name: LEAF for f in dataclasses.fields(NetworkParams)}
_EXPERIMENT = {f.name: LEAF for f in dataclasses.fields(Experiment)}
_SYNTHETIC = {"message_bytes": LEAF, "pattern": LEAF, "target": LEAF}
SCHEMA: dict[str, Any] = {
    "name": LEAF, "description": LEAF, "seed": LEAF, "workload": LEAF, "extends": LEAF,
    "network": _NETWORK,
    "profiles": {"*": LEAF},
    "nodes": [_NODE],
    "node_groups": [_GROUP],
    "node_overrides": {"*": _OVERRIDE},
    "links": [_LINK],
    "cells": [_CELL],
    "experiment": _EXPERIMENT,
    "synthetic": _SYNTHETIC,
}


# --------------------------------------------------------------------------------------------- TOML value writer
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.match(k) else _toml_str(k)


def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(v: Any) -> str:
    """A value in TOML syntax (strings, bools, ints, floats, lists, inline tables)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_toml_key(str(k))} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, Sequence):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, Path):
        return _toml_str(str(v))
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _show(v: Any) -> str:
    try:
        s = toml_value(v)
    except TypeError:
        s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


# ------------------------------------------------------------------------------------------------ validation
class _Ctx:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, value: Any, msg: str) -> NoReturn:
        raise ScenarioError(f"{self.source}: {key} = {_show(value)}: {msg}")

    def fail_key(self, key: str, msg: str) -> NoReturn:
        raise ScenarioError(f"{self.source}: {key}: {msg}")

    def check_keys(self, table: Any, schema: Mapping[str, Any], where: str) -> dict[str, Any]:
        if not isinstance(table, dict):
            self.fail(where, table, "expected a table")
        allowed = sorted(schema)
        for k, v in table.items():
            if k not in schema:
                self.fail(_join(where, k), v, "unknown key" + _suggest(k, allowed))
        return table


def _join(where: str, k: str | int) -> str:
    if isinstance(k, int):
        return f"{where}[{k}]"
    return f"{where}.{k}" if where else k


def _suggest(k: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(k, allowed, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"{hint} (known keys: {', '.join(allowed)})"


def _req(ctx: _Ctx, t: dict, k: str, where: str) -> Any:
    if k not in t:
        ctx.fail_key(_join(where, k), "missing (required)")
    return t[k]


def _str(ctx: _Ctx, v: Any, key: str, choices: Sequence[str] | None = None, name: bool = False) -> str:
    if not isinstance(v, str):
        ctx.fail(key, v, "expected a string")
    if choices is not None and v not in choices:
        ctx.fail(key, v, f"must be one of {', '.join(choices)}" + _did_you_mean(v, choices))
    if name and not _NAME_RE.match(v):
        ctx.fail(key, v, "names may use only letters, digits, '_', '-' and '.'")
    return v


def _did_you_mean(v: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(v, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _int(ctx: _Ctx, v: Any, key: str, lo: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        ctx.fail(key, v, "expected an integer")
    if lo is not None and v < lo:
        ctx.fail(key, v, f"must be >= {lo}")
    return v


def _float(ctx: _Ctx, v: Any, key: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        ctx.fail(key, v, "expected a number")
    if not math.isfinite(v):
        ctx.fail(key, v, "must be finite")
    return float(v)


def _bool(ctx: _Ctx, v: Any, key: str) -> bool:
    if not isinstance(v, bool):
        ctx.fail(key, v, "expected true or false")
    return v


def _list(ctx: _Ctx, v: Any, key: str) -> list:
    if not isinstance(v, list | tuple):
        ctx.fail(key, v, "expected a list")
    return list(v)


def _qty(ctx: _Ctx, v: Any, key: str, parse, what: str, positive: bool) -> float:
    try:
        x = parse(v)
    except units.UnitError as e:
        ctx.fail(key, v, str(e))
    if positive and x <= 0:
        ctx.fail(key, v, f"{what} must be positive")
    if not positive and x < 0:
        ctx.fail(key, v, f"{what} must not be negative")
    return x


def _bandwidth(ctx: _Ctx, v: Any, key: str) -> float:
    return _qty(ctx, v, key, units.parse_rate, "bandwidth", True)


def _latency(ctx: _Ctx, v: Any, key: str) -> float:
    return _qty(ctx, v, key, units.parse_time, "latency", False)


def _speed(ctx: _Ctx, v: Any, key: str) -> float:
    return _qty(ctx, v, key, units.parse_flops, "compute speed", True)


def _network(ctx: _Ctx, t: Any) -> NetworkParams:
    t = ctx.check_keys(t, _NETWORK, "network")
    d = NetworkParams()
    ip = _int(ctx, t.get("ip_header_bytes", d.ip_header_bytes), "network.ip_header_bytes", 0)
    link = _int(ctx, t.get("link_header_bytes", d.link_header_bytes), "network.link_header_bytes", 0)
    mtu = _int(ctx, t.get("mtu", d.mtu), "network.mtu", 1)
    if mtu <= ip:
        ctx.fail("network.mtu", mtu, f"mtu must exceed ip_header_bytes ({ip})")
    headers = _bool(ctx, t.get("headers", d.headers), "network.headers")
    return NetworkParams(mtu, ip, link, headers)


def _profiles(ctx: _Ctx, t: Any) -> dict[str, float]:
    if not isinstance(t, dict):
        ctx.fail("profiles", t, "expected a table of name = \"<speed>\"")
    out = dict(DEFAULT_PROFILES)
    for k, v in t.items():
        _str(ctx, k, f"profiles.{k}", name=True)
        out[k] = _speed(ctx, v, f"profiles.{k}")
    return out


def _experiment(ctx: _Ctx, t: Any) -> Experiment:
    t = ctx.check_keys(t, _EXPERIMENT, "experiment")
    d = Experiment()

    def g(k: str) -> Any:
        return t.get(k, getattr(d, k))

    def key(k: str) -> str:
        return f"experiment.{k}"

    classes = _list(ctx, g("classes"), key("classes"))
    for i, c in enumerate(classes):
        _int(ctx, c, f"{key('classes')}[{i}]", 0)
        if c > 9:
            ctx.fail(f"{key('classes')}[{i}]", c, "Fashion-MNIST classes are 0..9")
    if len(set(classes)) != len(classes):
        ctx.fail(key("classes"), classes, "classes must be unique")
    if len(classes) < 2:
        ctx.fail(key("classes"), classes, "need at least 2 classes")
    p = _int(ctx, g("clients_per_class"), key("clients_per_class"), 1)
    n_clients = t.get("clients")
    if n_clients is not None:
        _int(ctx, n_clients, key("clients"), 1)
        if n_clients != p * len(classes):
            ctx.fail(key("clients"), n_clients, f"must equal clients_per_class x len(classes) = {p} x "
                     f"{len(classes)} = {p * len(classes)} (or leave it out)")
    d_out = _float(ctx, g("outlier_fraction"), key("outlier_fraction"))
    if not 0 < d_out < 0.5:
        ctx.fail(key("outlier_fraction"), d_out, "must lie in (0, 0.5)")
    split_seed = t.get("split_seed")
    if split_seed is not None:
        _int(ctx, split_seed, key("split_seed"), 0)
    cap = t.get("max_samples_per_client")
    if cap is not None:
        _int(ctx, cap, key("max_samples_per_client"), 2)
    tau = _float(ctx, g("tau"), key("tau"))
    if tau <= 0:
        ctx.fail(key("tau"), tau, "must be positive")
    local_epochs = _list(ctx, g("local_epochs"), key("local_epochs"))
    if not local_epochs:
        ctx.fail(key("local_epochs"), local_epochs, "need at least one entry")
    for i, e in enumerate(local_epochs):
        _int(ctx, e, f"{key('local_epochs')}[{i}]", 1)
    lr = _float(ctx, g("lr"), key("lr"))
    if lr <= 0:
        ctx.fail(key("lr"), lr, "must be positive")
    val = _float(ctx, g("val_fraction"), key("val_fraction"))
    if not 0 <= val < 1:
        ctx.fail(key("val_fraction"), val, "must lie in [0, 1)")
    baselines = _list(ctx, g("baselines"), key("baselines"))
    for i, b in enumerate(baselines):
        _str(ctx, b, f"{key('baselines')}[{i}]", ("local", "ideal", "centralised"))
    if len(set(baselines)) != len(baselines):
        ctx.fail(key("baselines"), baselines, "baselines must be unique")
    data_dir = t.get("data_dir")
    if data_dir is not None:
        _str(ctx, data_dir, key("data_dir"))
        data_dir = data_dir or None
    return Experiment(
        classes=tuple(classes),
        clients_per_class=p,
        clients=n_clients,
        outlier_fraction=d_out,
        split=_str(ctx, g("split"), key("split"), SPLITS),
        split_seed=split_seed,
        max_samples_per_client=cap,
        tau=tau,
        community_method=_str(ctx, g("community_method"), key("community_method"), ("leiden", "fastgreedy")),
        phase1_model=_str(ctx, g("phase1_model"), key("phase1_model"), ("ae5", "ocsvm")),
        phase1_epochs=_int(ctx, g("phase1_epochs"), key("phase1_epochs"), 1),
        phase2_model=_str(ctx, g("phase2_model"), key("phase2_model"), ("ae7", "flat")),
        rounds=_int(ctx, g("rounds"), key("rounds"), 1),
        local_epochs=tuple(local_epochs),
        local_baseline_epochs=_int(ctx, g("local_baseline_epochs"), key("local_baseline_epochs"), 1),
        patience=_int(ctx, g("patience"), key("patience"), 1),
        restore_best=_bool(ctx, g("restore_best"), key("restore_best")),
        centralised_epochs=_int(ctx, g("centralised_epochs"), key("centralised_epochs"), 1),
        aggregator=_str(ctx, g("aggregator"), key("aggregator"), ("member", "server")),
        batch_size=_int(ctx, g("batch_size"), key("batch_size"), 1),
        lr=lr,
        val_fraction=val,
        persist_optimizer=_bool(ctx, g("persist_optimizer"), key("persist_optimizer")),
        detector=_str(ctx, g("detector"), key("detector"), DETECTORS),
        baselines=tuple(baselines),
        data_dir=data_dir,
        device=_str(ctx, g("device"), key("device"), ("cpu", "cuda", "auto")),
        workers=_int(ctx, g("workers"), key("workers"), 0),
        preset_note=_str(ctx, g("preset_note"), key("preset_note")),
    )


@dataclass
class _NodeSpec:
    name: str
    kind: str
    key: str  # where it was declared, e.g. "nodes[3]" or "node_groups[0]"
    profile: tuple[str, str] | None = None  # (value, key)
    flops: float | None = None
    uplink: dict[str, Any] | None = None  # to=(value, key), bandwidth, latency, name, key
    cell: tuple[str, str] | None = None


def _uplink(ctx: _Ctx, t: Any, where: str, base: dict[str, Any] | None) -> dict[str, Any]:
    t = ctx.check_keys(t, _UPLINK, where)
    up = dict(base) if base else {"latency": 0.0, "name": None}
    if "to" in t:
        up["to"] = (_str(ctx, t["to"], f"{where}.to"), f"{where}.to")
    if "bandwidth" in t:
        up["bandwidth"] = _bandwidth(ctx, t["bandwidth"], f"{where}.bandwidth")
    if "latency" in t:
        up["latency"] = _latency(ctx, t["latency"], f"{where}.latency")
    if "name" in t:
        up["name"] = _str(ctx, t["name"], f"{where}.name", name=True)
    if "to" not in up:
        ctx.fail_key(f"{where}.to", "missing (an uplink needs the node it connects to)")
    if "bandwidth" not in up:
        ctx.fail_key(f"{where}.bandwidth", "missing (an uplink needs a bandwidth)")
    up["key"] = where
    return up


def _compute_fields(ctx: _Ctx, t: dict, where: str, profiles: dict[str, float], spec: _NodeSpec) -> None:
    if "profile" in t and "flops" in t:
        ctx.fail(f"{where}.flops", t["flops"], "give either profile or flops, not both")
    if "profile" in t:
        p = _str(ctx, t["profile"], f"{where}.profile")
        if p not in profiles:
            ctx.fail(f"{where}.profile", p, "unknown profile" + _did_you_mean(p, list(profiles))
                     + f" (profiles: {', '.join(profiles)})")
        spec.profile, spec.flops = (p, f"{where}.profile"), None
    if "flops" in t:
        spec.flops, spec.profile = _speed(ctx, t["flops"], f"{where}.flops"), None


def _node_specs(ctx: _Ctx, d: dict, profiles: dict[str, float]) -> list[_NodeSpec]:
    specs: list[_NodeSpec] = []
    where_of: dict[str, str] = {}

    def add(spec: _NodeSpec, name_key: str) -> None:
        if spec.name in where_of:
            ctx.fail(name_key, spec.name, f"duplicate node (already declared at {where_of[spec.name]})")
        where_of[spec.name] = spec.key
        specs.append(spec)

    for i, t in enumerate(_list(ctx, d.get("nodes", []), "nodes")):
        w = f"nodes[{i}]"
        ctx.check_keys(t, _NODE, w)
        name = _str(ctx, _req(ctx, t, "name", w), f"{w}.name", name=True)
        kind = _str(ctx, _req(ctx, t, "kind", w), f"{w}.kind", NODE_KINDS)
        s = _NodeSpec(name, kind, w)
        _compute_fields(ctx, t, w, profiles, s)
        if "uplink" in t:
            s.uplink = _uplink(ctx, t["uplink"], f"{w}.uplink", None)
        if "cell" in t:
            s.cell = (_str(ctx, t["cell"], f"{w}.cell"), f"{w}.cell")
        add(s, f"{w}.name")

    for i, t in enumerate(_list(ctx, d.get("node_groups", []), "node_groups")):
        w = f"node_groups[{i}]"
        ctx.check_keys(t, _GROUP, w)
        prefix = _str(ctx, _req(ctx, t, "prefix", w), f"{w}.prefix", name=True)
        count = _int(ctx, _req(ctx, t, "count", w), f"{w}.count", 1)
        start = _int(ctx, t.get("start", 0), f"{w}.start", 0)
        kind = _str(ctx, t.get("kind", "client"), f"{w}.kind", NODE_KINDS)
        proto = _NodeSpec("", kind, w)
        _compute_fields(ctx, t, w, profiles, proto)
        uplink = _uplink(ctx, t["uplink"], f"{w}.uplink", None) if "uplink" in t else None
        if uplink is not None and uplink["name"] is not None:
            ctx.fail(f"{w}.uplink.name", uplink["name"], "a group's uplinks are named <node>-<to>; "
                     "name single links in [node_overrides.<node>] instead")
        cell = (_str(ctx, t["cell"], f"{w}.cell"), f"{w}.cell") if "cell" in t else None
        width = len(str(start + count - 1))
        for j in range(start, start + count):
            name = f"{prefix}{j:0{width}d}"
            s = dataclasses.replace(proto, name=name, uplink=dict(uplink) if uplink else None, cell=cell)
            add(s, f"{w}.prefix")

    overrides = d.get("node_overrides", {})
    if not isinstance(overrides, dict):
        ctx.fail("node_overrides", overrides, "expected a table of [node_overrides.<node>] tables")
    by_name = {s.name: s for s in specs}
    for name, t in overrides.items():
        w = f"node_overrides.{name}"
        if name not in by_name:
            ctx.fail(w, t, "unknown node" + _did_you_mean(name, list(by_name)))
        ctx.check_keys(t, _OVERRIDE, w)
        s = by_name[name]
        _compute_fields(ctx, t, w, profiles, s)
        if "uplink" in t:
            s.uplink = _uplink(ctx, t["uplink"], f"{w}.uplink", s.uplink)
        if "cell" in t:
            s.cell = (_str(ctx, t["cell"], f"{w}.cell"), f"{w}.cell")
    return specs


def _known(ctx: _Ctx, name: str, key: str, nodes: Mapping[str, Any]) -> None:
    if name not in nodes:
        close = difflib.get_close_matches(name, list(nodes), n=3, cutoff=0.5)
        near = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        ctx.fail(key, name, "unknown node" + near)


def scenario_from_dict(d: Mapping[str, Any], source: str | Path = "<dict>") -> Scenario:
    """Validate a scenario given as a TOML-like dict (e.g. built in code) and return the frozen Scenario."""
    src = str(source)
    ctx = _Ctx(src)
    if not isinstance(d, Mapping):
        raise ScenarioError(f"{src}: a scenario must be a table")
    d = dict(d)
    ctx.check_keys(d, SCHEMA, "")
    if "extends" in d:
        ctx.fail("extends", d["extends"], "extends is resolved by load_scenario (files only)")
    default_name = Path(src).stem if src != "<dict>" else "scenario"
    name = _str(ctx, d.get("name", default_name), "name", name=True)
    description = _str(ctx, d.get("description", ""), "description")
    seed = _int(ctx, d.get("seed", 0), "seed", 0)
    workload = _str(ctx, d.get("workload", "fedad"), "workload", WORKLOADS)
    network = _network(ctx, d.get("network", {}))
    profiles = _profiles(ctx, d.get("profiles", {}))
    specs = _node_specs(ctx, d, profiles)
    if not specs:
        ctx.fail_key("nodes", "the scenario declares no nodes (use [[nodes]] or [[node_groups]])")
    nodes_by_name = {s.name: s for s in specs}

    # cells
    cells: list[Cell] = []
    cell_names: dict[str, str] = {}
    ap_cell: dict[str, str] = {}
    for i, t in enumerate(_list(ctx, d.get("cells", []), "cells")):
        w = f"cells[{i}]"
        ctx.check_keys(t, _CELL, w)
        cname = _str(ctx, _req(ctx, t, "name", w), f"{w}.name", name=True)
        if cname in cell_names:
            ctx.fail(f"{w}.name", cname, f"duplicate cell (already declared at {cell_names[cname]})")
        ap = _str(ctx, _req(ctx, t, "ap", w), f"{w}.ap")
        _known(ctx, ap, f"{w}.ap", nodes_by_name)
        if nodes_by_name[ap].kind != "ap":
            ctx.fail(f"{w}.ap", ap, f"a cell's access point must be a node of kind \"ap\" (it is "
                     f"{nodes_by_name[ap].kind!r})")
        if ap in ap_cell:
            ctx.fail(f"{w}.ap", ap, f"this access point already serves cell {ap_cell[ap]!r}")
        bw = _bandwidth(ctx, _req(ctx, t, "bandwidth", w), f"{w}.bandwidth")
        lat = _latency(ctx, t.get("latency", 0.0), f"{w}.latency")
        cell_names[cname] = w
        ap_cell[ap] = cname
        cells.append(Cell(cname, ap, bw, lat))
    cell_by_name = {c.name: c for c in cells}

    # nodes (compute speed, cell membership)
    nodes: list[Node] = []
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
            if cell not in cell_by_name:
                ctx.fail(ckey, cell, "unknown cell" + _did_you_mean(cell, list(cell_by_name))
                         + (f" (cells: {', '.join(cell_by_name)})" if cell_by_name else " (no [[cells]] declared)"))
            if cell_by_name[cell].ap == s.name:
                ctx.fail(ckey, cell, "an access point is not a station of its own cell")
        nodes.append(Node(s.name, s.kind, profile, flops, cell))

    # links: explicit ones, then uplinks in node order
    links: list[Link] = []
    link_where: dict[str, str] = {}
    pair_where: dict[frozenset, str] = {}

    def add_link(lname: str, a: str, b: str, bw: float, lat: float, w: str, name_key: str) -> None:
        if a == b:
            ctx.fail(f"{w}.b", b, "a link needs two different ends")
        if lname in link_where or lname in cell_names:
            ctx.fail(name_key, lname, f"duplicate link name (already used at "
                     f"{link_where.get(lname) or cell_names.get(lname)})")
        pair = frozenset((a, b))
        if pair in pair_where:
            ctx.fail(w, lname, f"duplicate link between {a} and {b} (already linked at {pair_where[pair]})")
        link_where[lname] = w
        pair_where[pair] = w
        links.append(Link(lname, a, b, bw, lat))

    for i, t in enumerate(_list(ctx, d.get("links", []), "links")):
        w = f"links[{i}]"
        ctx.check_keys(t, _LINK, w)
        a = _str(ctx, _req(ctx, t, "a", w), f"{w}.a")
        b = _str(ctx, _req(ctx, t, "b", w), f"{w}.b")
        _known(ctx, a, f"{w}.a", nodes_by_name)
        _known(ctx, b, f"{w}.b", nodes_by_name)
        bw = _bandwidth(ctx, _req(ctx, t, "bandwidth", w), f"{w}.bandwidth")
        lat = _latency(ctx, t.get("latency", 0.0), f"{w}.latency")
        lname = _str(ctx, t.get("name", f"{a}-{b}"), f"{w}.name", name=True)
        add_link(lname, a, b, bw, lat, w, f"{w}.name")
    for s in specs:
        if s.uplink is None:
            continue
        up = s.uplink
        to, tokey = up["to"]
        _known(ctx, to, tokey, nodes_by_name)
        lname = up["name"] or f"{s.name}-{to}"
        add_link(lname, s.name, to, up["bandwidth"], up["latency"], up["key"], f"{up['key']}.name")

    for s in specs:
        if s.cell is not None:
            pair = frozenset((s.name, cell_by_name[s.cell[0]].ap))
            if pair in pair_where:
                ctx.fail(s.cell[1], s.cell[0], f"{s.name} is already linked to this cell's access point at "
                         f"{pair_where[pair]}; use either the cell or the link")

    # at most one server/cloud node
    servers = [s for s in specs if s.kind in SERVER_KINDS]
    if len(servers) > 1:
        ctx.fail(f"{servers[1].key}", servers[1].name, f"at most one node of kind server/cloud (already have "
                 f"{servers[0].name!r} from {servers[0].key})")

    # connectivity: every client (and the server) reachable from the reference node
    adj: dict[str, set[str]] = {s.name: set() for s in specs}
    for ln in links:
        adj[ln.a].add(ln.b)
        adj[ln.b].add(ln.a)
    for n in nodes:
        if n.cell is not None:
            ap = cell_by_name[n.cell].ap
            adj[n.name].add(ap)
            adj[ap].add(n.name)
    must = [s for s in specs if s.kind == "client" or s.kind in SERVER_KINDS]
    if must:
        ref = servers[0].name if servers else must[0].name
        seen = {ref}
        stack = [ref]
        while stack:
            u = stack.pop()
            for v in adj[u]:
                if v not in seen:
                    seen.add(v)
                    stack.append(v)
        for s in must:
            if s.name not in seen:
                ctx.fail(s.key, s.name, f"{s.kind} {s.name} is disconnected: no chain of links or cells "
                         f"connects it to {ref} (give it an uplink, a cell or a [[links]] entry)")

    experiment = _experiment(ctx, d.get("experiment", {}))
    clients = [n.name for n in nodes if n.kind == "client"]
    server = servers[0].name if servers else None
    synthetic = _synthetic(ctx, d.get("synthetic", {}), nodes_by_name, clients, server)

    if workload == "fedad":
        n = experiment.n_clients
        if len(clients) < n:
            ctx.fail("experiment.clients_per_class", experiment.clients_per_class,
                     f"workload \"fedad\" needs n = clients_per_class x len(classes) = "
                     f"{experiment.clients_per_class} x {len(experiment.classes)} = {n} client nodes; "
                     f"the scenario has {len(clients)}")
        if experiment.aggregator == "server" and server is None:
            ctx.fail("experiment.aggregator", "server", "needs a node of kind server or cloud; the scenario has none")
        if "centralised" in experiment.baselines and server is None:
            ctx.fail("experiment.baselines", list(experiment.baselines),
                     "the \"centralised\" baseline needs a node of kind server or cloud; the scenario has none "
                     "(drop it from baselines or add a server)")
    elif workload == "synthetic" and not clients:
        ctx.fail_key("nodes", "workload \"synthetic\" needs at least one client node")

    return Scenario(
        name=name,
        description=description,
        seed=seed,
        workload=workload,
        nodes=tuple(nodes),
        links=tuple(links),
        cells=tuple(cells),
        profiles=tuple(sorted(profiles.items())),
        network=network,
        experiment=experiment,
        synthetic=synthetic,
        source=Path(src) if src != "<dict>" else None,
    )


def _synthetic(ctx: _Ctx, t: Any, nodes: Mapping[str, Any], clients: list[str],
               server: str | None) -> SyntheticParams:
    t = ctx.check_keys(t, _SYNTHETIC, "synthetic")
    mb = t.get("message_bytes", SyntheticParams.message_bytes)
    size = _qty(ctx, mb, "synthetic.message_bytes", units.parse_size, "message size", False)
    if not float(size).is_integer():
        ctx.fail("synthetic.message_bytes", mb, "must be a whole number of bytes")
    pattern = t.get("pattern", list(SyntheticParams.pattern))
    if isinstance(pattern, str):
        pattern = [pattern]
    _list(ctx, pattern, "synthetic.pattern")
    if not pattern:
        ctx.fail("synthetic.pattern", pattern, "need at least one pattern")
    for i, p in enumerate(pattern):
        _str(ctx, p, f"synthetic.pattern[{i}]", PATTERNS)
    target = t.get("target")
    if target is not None:
        _str(ctx, target, "synthetic.target")
        _known(ctx, target, "synthetic.target", nodes)
    else:
        target = server if server is not None else (clients[0] if clients else None)
    return SyntheticParams(int(size), tuple(pattern), target)


# ---------------------------------------------------------------------------------------------- overrides / load
_SEG = re.compile(r"^([^.\[\]]+)((?:\[\d+\])*)$")


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _split_key(key: str) -> list[tuple[str, list[int]]] | None:
    out = []
    for part in key.split("."):
        m = _SEG.match(part.strip())
        if not m:
            return None
        out.append((m.group(1), [int(x) for x in re.findall(r"\[(\d+)\]", m.group(2))]))
    return out


def apply_overrides(d: dict[str, Any], overrides: Iterable[str], source: str = "<dict>") -> dict[str, Any]:
    """Apply `KEY=VALUE` overrides (dotted keys, `[i]` for array entries) to the TOML dict `d` in place.
    VALUE is read as a TOML value (`3`, `true`, `[1, 2]`, `"x"`) and otherwise kept as a string."""
    for item in overrides:
        if "=" not in item:
            raise ScenarioError(f"{source}: --set {item}: expected KEY=VALUE, e.g. --set experiment.rounds=3")
        key, raw = item.split("=", 1)
        key = key.strip()
        value = _parse_value(raw.strip())
        _set(d, key, value, raw, source)
    return d


def _set(d: dict[str, Any], key: str, value: Any, raw: str, source: str) -> None:
    segs = _split_key(key)
    head = f"{source}: --set {key}={raw}"
    if not segs:
        raise ScenarioError(f"{head}: cannot read the key (write it like experiment.rounds or links[0].bandwidth)")
    node: Any = d
    schema: Any = SCHEMA
    where = ""
    for i, (name, idxs) in enumerate(segs):
        last = i == len(segs) - 1
        if not isinstance(schema, dict):
            raise ScenarioError(f"{head}: {where} is a value, not a table")
        if "*" in schema:
            sub = schema["*"]
        elif name in schema:
            sub = schema[name]
        else:
            allowed = sorted(schema)
            place = f"[{where}]" if where else "the top level"
            close = difflib.get_close_matches(name, allowed, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ScenarioError(f"{head}: unknown key {name!r} in {place}{hint} (keys there: {', '.join(allowed)})")
        where = _join(where, name)
        if not isinstance(node, dict):
            raise ScenarioError(f"{head}: {where} is not a table in the scenario")
        if not idxs:
            if last:
                node[name] = value
                return
            if name not in node:
                node[name] = {}
            node = node[name]
            schema = sub
            continue
        arr = node.get(name)
        for k, idx in enumerate(idxs):
            if arr is None or arr == []:
                raise ScenarioError(f"{head}: {where} has no entries")
            if not isinstance(arr, list):
                raise ScenarioError(f"{head}: {where} is not a list in the scenario")
            if idx >= len(arr):
                raise ScenarioError(f"{head}: {where} has {len(arr)} entries (indices 0..{len(arr) - 1})")
            if last and k == len(idxs) - 1:
                arr[idx] = value
                return
            where = f"{where}[{idx}]"
            if k == len(idxs) - 1:
                node = arr[idx]
            else:
                arr = arr[idx]
        schema = sub[0] if isinstance(sub, list) else LEAF


def _read_toml(p: Path, src: str, text: str | None = None) -> dict[str, Any]:
    try:
        if text is None:
            text = p.read_text(encoding="utf-8")
        return tomllib.loads(text)
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
        raise ScenarioError(f"{src}: extends = {_show(ext)}: expected the path of another scenario file")
    bp = (p.parent / ext).resolve()
    if bp in seen:
        raise ScenarioError(f"{src}: extends = {_show(ext)}: scenarios extend each other in a cycle")
    if not bp.is_file():
        raise ScenarioError(f"{src}: extends = {_show(ext)}: no such file ({bp})")
    base = _resolve_extends(_read_toml(bp, str(bp)), bp, str(bp), (*seen, bp))
    base.pop("name", None)
    base.pop("description", None)
    return _merge(base, d)


def load_scenario(path: str | Path, overrides: Iterable[str] = (), seed: int | None = None) -> Scenario:
    """Read, override (`--set`), re-seed and validate a scenario file."""
    p = Path(path)
    src = str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(f"{src}: no such scenario file") from None
    except IsADirectoryError:
        raise ScenarioError(f"{src}: is a directory, not a scenario file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScenarioError(f"{src}: cannot read: {e}") from None
    d = _read_toml(p, src, text)
    d = _resolve_extends(d, p, src, (p.resolve(),))
    apply_overrides(d, overrides, src)
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ScenarioError(f"{src}: --seed {seed}: the seed must be an integer >= 0")
        d["seed"] = seed
    return scenario_from_dict(d, source=src)


# ------------------------------------------------------------------------------------------------- TOML writer
def _scenario_to_toml(sc: Scenario) -> str:
    out: list[str] = [
        f"# Resolved scenario written by simfl (source: {sc.source or 'built in code'}).",
        "# Groups are expanded into [[nodes]] and uplinks into [[links]]; overrides and the seed are applied.",
        "",
        f"name = {toml_value(sc.name)}",
        f"description = {toml_value(sc.description)}",
        f"seed = {sc.seed}",
        f"workload = {toml_value(sc.workload)}",
        "",
        "[network]",
    ]
    for f in dataclasses.fields(NetworkParams):
        out.append(f"{f.name} = {toml_value(getattr(sc.network, f.name))}")
    out += ["", "[profiles]"]
    for pname, flops in sc.profiles:
        out.append(f"{_toml_key(pname)} = {toml_value(units.format_flops(flops))}")
    for n in sc.nodes:
        out += ["", "[[nodes]]", f"name = {toml_value(n.name)}", f"kind = {toml_value(n.kind)}"]
        if n.profile is not None:
            out.append(f"profile = {toml_value(n.profile)}")
        elif n.flops is not None:
            out.append(f"flops = {toml_value(units.format_flops(n.flops))}")
        if n.cell is not None:
            out.append(f"cell = {toml_value(n.cell)}")
    for ln in sc.links:
        out += ["", "[[links]]", f"name = {toml_value(ln.name)}", f"a = {toml_value(ln.a)}",
                f"b = {toml_value(ln.b)}", f"bandwidth = {toml_value(units.format_rate(ln.bandwidth_bps))}",
                f"latency = {toml_value(units.format_time(ln.latency_s))}"]
    for c in sc.cells:
        out += ["", "[[cells]]", f"name = {toml_value(c.name)}", f"ap = {toml_value(c.ap)}",
                f"bandwidth = {toml_value(units.format_rate(c.bandwidth_bps))}",
                f"latency = {toml_value(units.format_time(c.latency_s))}"]
    out += ["", "[experiment]"]
    for f in dataclasses.fields(Experiment):
        v = getattr(sc.experiment, f.name)
        if v is not None:
            out.append(f"{f.name} = {toml_value(v)}")
    out += ["", "[synthetic]", f"message_bytes = {sc.synthetic.message_bytes}",
            f"pattern = {toml_value(list(sc.synthetic.pattern))}"]
    if sc.synthetic.target is not None:
        out.append(f"target = {toml_value(sc.synthetic.target)}")
    return "\n".join(out) + "\n"
