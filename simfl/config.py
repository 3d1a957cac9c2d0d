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
from simfl.schema import (
    DETECTORS,
    EXPERIMENT,
    MAX_SEED,
    MESSAGE_BYTES_IN_MEMORY,
    NETWORK,
    NODE_KINDS,
    SCENARIO,
    SERVER_KINDS,
    SPLITS,
    SYNTHETIC,
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
class Link:
    """A full-duplex point-to-point link: each direction has `bandwidth_bps` and `latency_s` of its own."""

    name: str
    a: str
    b: str
    bandwidth_bps: float
    latency_s: float
    buffer: int | None = None  # packets each sending port queues (None: network.buffer)


@dataclass(frozen=True)
class Cell:
    """A shared medium (a WiFi cell): every station-AP hop of the cell, in either direction, shares one channel."""

    name: str
    ap: str
    bandwidth_bps: float
    latency_s: float
    buffer: int | None = None  # packets each transmitter's queue holds (None: network.buffer)


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


def _uplink(ck: Checker, t: Mapping[str, Any] | None, where: str, base: dict[str, Any] | None) -> dict[str, Any]:
    """A validated uplink table (partial in overrides) on top of `base`."""
    up = dict(base) if base else {"latency": 0.0, "name": None}
    for k, v in (t or {}).items():
        up[k] = (v, f"{where}.to") if k == "to" else v
    for k in ("to", "bandwidth"):
        if up.get(k) is None:
            ck.fail_key(f"{where}.{k}", "missing (an uplink needs the node it connects to and a bandwidth)")
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


def _cells(ck: Checker, entries: list[dict[str, Any]], nodes: Mapping[str, _NodeSpec]) -> list[Cell]:
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
        cells.append(Cell(name, ap, t["bandwidth"], t["latency"], t["buffer"]))
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


def _links(ck: Checker, entries: list[dict[str, Any]], specs: list[_NodeSpec], cells: list[Cell]) -> list[Link]:
    """[[links]] in order, then the uplinks in node order; a station is not also linked to its access point."""
    by_name = {s.name: s for s in specs}
    acc = _Links(ck, cells)
    for i, t in enumerate(entries):
        w = f"links[{i}]"
        _known(ck, t["a"], f"{w}.a", by_name)
        _known(ck, t["b"], f"{w}.b", by_name)
        name = t["name"] or f"{t['a']}-{t['b']}"
        acc.add(Link(name, t["a"], t["b"], t["bandwidth"], t["latency"], t["buffer"]), w, f"{w}.name")
    for s in specs:
        if s.uplink is not None:
            up = s.uplink
            to, tokey = up["to"]
            _known(ck, to, tokey, by_name)
            ln = Link(up["name"] or f"{s.name}-{to}", s.name, to, up["bandwidth"], up["latency"], up.get("buffer"))
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
    cells = _cells(ck, v["cells"], by_name)
    nodes = _nodes(ck, specs, {c.name: c for c in cells}, profiles)
    links = _links(ck, v["links"], specs, cells)
    servers = _servers(ck, specs)
    _connected(ck, specs, nodes, links, cells)
    experiment = _experiment(ck, v["experiment"])
    clients = [n.name for n in nodes if n.kind == "client"]
    server = servers[0].name if servers else None
    synthetic = _synthetic(ck, v["synthetic"], by_name, clients, server)
    _workload_needs(ck, v["workload"], experiment, clients, server)
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
        source=Path(src) if src != "<dict>" else None,
    )


def _network(ck: Checker, t: dict[str, Any]) -> NetworkParams:
    if t["mtu"] <= t["ip_header_bytes"]:
        ck.fail("network.mtu", t["mtu"], f"mtu must exceed ip_header_bytes ({t['ip_header_bytes']})")
    return NetworkParams(**t)


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
            raise ScenarioError(f"{source}: --set {_one_line(item)}: expected KEY=VALUE, e.g. "
                                "--set experiment.rounds=3")
        key, raw = item.split("=", 1)
        _set(d, key.strip(), _parse_value(raw.strip()), f"{source}: --set {_one_line(key.strip())}={_one_line(raw)}")
    return d


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
    base = _resolve_extends(_read_toml(bp, str(bp)), bp, str(bp), (*seen, bp))
    base.pop("name", None)
    base.pop("description", None)
    return _merge(base, d)


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
        "links": [_buffered({"name": ln.name, "a": ln.a, "b": ln.b, "bandwidth": units.format_rate(ln.bandwidth_bps),
                             "latency": units.format_time(ln.latency_s)}, ln.buffer) for ln in sc.links],
        "cells": [_buffered({"name": c.name, "ap": c.ap, "bandwidth": units.format_rate(c.bandwidth_bps),
                             "latency": units.format_time(c.latency_s)}, c.buffer) for c in sc.cells],
        "experiment": kept(sc.experiment),
        "synthetic": kept(sc.synthetic),
    }
    return {k: v for k, v in out.items() if v != []}


def _buffered(t: dict[str, Any], buffer: int | None) -> dict[str, Any]:
    """A link or cell table with its buffer, where one was given."""
    return t if buffer is None else {**t, "buffer": buffer}
