"""The network graph built from a Scenario, shortest-latency routes, and connectivity.

The graph is a networkx `Graph`, the one home of the network's structure: nodes are the scenario's nodes (in
declaration order, with their `kind` and compute speed `flops`); edges are point-to-point links (full duplex) and
cell memberships (station <-> AP, carried by the cell's channel), with `link`, `medium` and `hops`: the `Hop` in
each direction, keyed by its sending node. A hop carries its direction's capacity, one-way latency, stationary
packet loss rate and mean jitter. A route is a tuple of `Hop`s; each hop names the *resource* whose capacity it
uses: `"<link>:<src>><dst>"` for one direction of a link, `"cell:<cell>"` for every hop through a shared cell, or
for a cell with one channel per direction (`duplex`) `"cell:<cell>:up"` (station -> AP) and `"cell:<cell>:down"`.
Two stations of the same cell talk through their access point (two hops on the cell's channel(s)).

Resources are the capacities transfers share, in the links table's order: each link's two directions (a -> b,
then b -> a), then each cell (a duplex cell: up, then down). A resource may have a capacity trace (its capacity
then is the trace's value at time 0, and changes over time in the network).

Routing: least total latency (summed in integer picoseconds, so equal sums tie exactly), then fewest hops, then the
predecessor with the smallest name. Latencies are per direction, so the route back may differ from the route
there. Routes are computed once per source (Dijkstra over the graph's adjacency, kept here because networkx's
shortest paths have no such tie-break) and cached: every node's route from it, each built from its predecessor's.

Connectivity comes from the graph: `reachable(node)`, `components()`; `without(links)` is the topology with links
or cells out of service, `without_edges(pairs)` with single graph edges out of service (an outage): the same nodes
and resources, routes recomputed around them. `fault_edges` names the graph edges each of the scenario's
[[faults]] takes down.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import networkx as nx

from simfl.config import Cell, Direction, Link, Scenario
from simfl.errors import SimflError
from simfl.faults import Fault
from simfl.linkmodels import CapacityTrace

__all__ = ["Hop", "Resource", "Topology", "Edge"]

Edge = frozenset[str]  # a graph edge: the two nodes it joins


@dataclass(frozen=True, slots=True)
class Hop:
    src: str
    dst: str
    link: str  # link name, or cell name for a cell hop
    resource: str  # id of the capacity this hop uses
    medium: str  # "p2p" or "cell"
    capacity_bps: float  # with a capacity trace: its value at time 0
    latency_s: float
    loss: float = 0.0  # stationary probability that a packet is lost on this hop
    jitter_s: float = 0.0  # mean extra delay per message


@dataclass(frozen=True, slots=True)
class Resource:
    """One capacity that transfers share: a link direction, a whole cell, or one direction of a duplex cell."""

    id: str
    link: str
    medium: str  # "p2p" or "cell"
    src: str  # the link direction's sender; for a cell, its access point ("*" for a duplex cell's up channel)
    dst: str  # the link direction's receiver; for a cell, "*" (the access point for a duplex cell's up channel)
    capacity_bps: float  # with a trace: its value at time 0
    latency_s: float  # for a shared cell: the AP -> station delay
    trace: CapacityTrace | None = None


class Topology:
    """Nodes, links and cells of a scenario as a networkx graph; routes and connectivity over it."""

    def __init__(self, graph: nx.Graph, resources: Sequence[Resource],
                 faults: Sequence[tuple[Fault, frozenset[Edge]]] = ()) -> None:
        self.graph = graph
        self.resources: tuple[Resource, ...] = tuple(resources)
        self.nodes: tuple[str, ...] = tuple(graph.nodes)
        self.faults: tuple[tuple[Fault, frozenset[Edge]], ...] = tuple(faults)  # each with the edges it takes down
        # adjacency: node -> list of (neighbour, Hop, its latency in integer picoseconds) sorted by the neighbour's
        # name, deterministic
        self._adj: dict[str, list[tuple[str, Hop, int]]] = {
            a: [(b, data["hops"][a], round(data["hops"][a].latency_s * 1e12)) for b, data in sorted(nbrs.items())]
            for a, nbrs in graph.adjacency()}
        self._trees: dict[str, dict[str, tuple[Hop, ...]]] = {}  # per source: the route to each node it reaches

    @classmethod
    def from_scenario(cls, sc: Scenario) -> Topology:
        g = nx.Graph()
        for n in sc.nodes:
            g.add_node(n.name, kind=n.kind, flops=n.flops or 0.0)
        resources: list[Resource] = []
        for ln in sc.links:
            ids = (f"{ln.name}:{ln.a}>{ln.b}", f"{ln.name}:{ln.b}>{ln.a}")
            up, down = _hops(ln, ln.a, ln.b, ids, "p2p")
            g.add_edge(ln.a, ln.b, link=ln.name, medium="p2p", hops={ln.a: up, ln.b: down})
            resources.append(_resource(ids[0], ln.name, "p2p", ln.a, ln.b, ln.up))
            resources.append(_resource(ids[1], ln.name, "p2p", ln.b, ln.a, ln.down))
        cells = {c.name: c for c in sc.cells}
        for c in sc.cells:
            if c.duplex:
                resources.append(_resource(f"cell:{c.name}:up", c.name, "cell", "*", c.ap, c.up))
                resources.append(_resource(f"cell:{c.name}:down", c.name, "cell", c.ap, "*", c.down))
            else:
                resources.append(_resource(f"cell:{c.name}", c.name, "cell", c.ap, "*", c.down))
        for n in sc.nodes:
            if n.cell is not None:
                c = cells[n.cell]
                ids = (f"cell:{c.name}:up", f"cell:{c.name}:down") if c.duplex else (f"cell:{c.name}",) * 2
                up, down = _hops(c, n.name, c.ap, ids, "cell")
                g.add_edge(n.name, c.ap, link=c.name, medium="cell", hops={n.name: up, c.ap: down})
        return cls(g, resources, [(f, _fault_edges(g, f)) for f in sc.faults])

    # ------------------------------------------------------------------ queries
    def _node(self, node: str) -> dict:
        try:
            return self.graph.nodes[node]
        except KeyError:
            raise SimflError(f"unknown node {node!r}") from None

    def kind(self, node: str) -> str:
        return self._node(node)["kind"]

    def flops(self, node: str) -> float:
        """The node's compute speed in FLOP/s (0.0 for pure network devices)."""
        return self._node(node)["flops"]

    def reachable(self, node: str) -> frozenset[str]:
        """The nodes `node` can reach over working links and cells (itself included)."""
        self._node(node)
        return frozenset(nx.node_connected_component(self.graph, node))

    def components(self) -> tuple[tuple[str, ...], ...]:
        """The connected components, each in declaration order, ordered by their first node (one when connected)."""
        order = {n: i for i, n in enumerate(self.nodes)}
        comps = [tuple(sorted(c, key=order.__getitem__)) for c in nx.connected_components(self.graph)]
        return tuple(sorted(comps, key=lambda c: order[c[0]]))

    def without(self, links: Iterable[str]) -> Topology:
        """This topology with the named links and cells out of service: the same nodes and resources (so the links
        table keeps its rows), their edges gone, and routes recomputed around them."""
        down = set(links)
        known = {r.link for r in self.resources}
        if down - known:
            raise SimflError(f"unknown link or cell {sorted(down - known)[0]!r} (known: {', '.join(sorted(known))})")
        return self.without_edges(frozenset((u, v)) for u, v, name in self.graph.edges(data="link") if name in down)

    def edges_down(self, t: float) -> frozenset[Edge]:
        """The graph edges its [[faults]] hold down at time t."""
        return frozenset(e for fault, edges in self.faults if fault.is_down(t) for e in edges)

    def next_fault_edge(self, t: float) -> float:
        """The first time after t at which one of its [[faults]] goes down or comes up (inf: none)."""
        return min((fault.next_edge(t) for fault, _ in self.faults), default=math.inf)

    def without_edges(self, edges: Iterable[Edge]) -> Topology:
        """This topology with the given graph edges (pairs of nodes) out of service; see `without`."""
        g = self.graph.copy()
        g.remove_edges_from([tuple(e) for e in edges])
        return Topology(g, self.resources)

    def route(self, src: str, dst: str) -> list[Hop]:
        """Hops from src to dst by least latency (deterministic tie-break, see module doc)."""
        return list(self.route_tuple(src, dst))

    def route_tuple(self, src: str, dst: str) -> tuple[Hop, ...]:
        hops = self.route_or_none(src, dst)
        if hops is None:
            self._node(dst)
            raise SimflError(f"no route from {src} to {dst}: no chain of working links and cells joins them ({src} "
                             f"reaches {len(self.reachable(src)) - 1} other node(s))")
        return hops

    def route_or_none(self, src: str, dst: str) -> tuple[Hop, ...] | None:
        """The route from src to dst, or None when no chain of working links and cells joins them."""
        tree = self._trees.get(src)
        if tree is None:
            self._node(src)
            tree = self._trees[src] = self._dijkstra(src)
        return tree.get(dst)

    def path_latency(self, src: str, dst: str) -> float:
        return sum(h.latency_s for h in self.route_tuple(src, dst))

    def one_way(self, src: str, dst: str, bits: float) -> float:
        """The time a packet of `bits` takes alone from src to dst: sum over the route's hops of
        (L_h + J_h + bits / C_h), J_h the mean jitter (the terms of the network's handshake and round trip)."""
        tree = self._trees.get(src)
        hops = None if tree is None else tree.get(dst)
        if hops is None:
            hops = self.route_tuple(src, dst)  # builds the tree, or raises: no route
        total = 0.0
        for h in reversed(hops):  # from the last hop back (the order these sums have always been taken in)
            total += h.latency_s + h.jitter_s + bits / h.capacity_bps
        return total

    def _dijkstra(self, src: str) -> dict[str, tuple[Hop, ...]]:
        """The route from src to every node it reaches (src itself: no hops), each built once from its
        predecessor's."""
        m = len(self.nodes)  # (latency in ps, hops) as one integer, latency * m + hops: hops < m, so the same order
        best: dict[str, int] = {src: 0}
        pred: dict[str, tuple[str, Hop]] = {}
        routes: dict[str, tuple[Hop, ...]] = {}  # also the set of nodes done, in the order they were settled
        heap = [(0, src)]
        adj = self._adj
        while heap:
            key, u = heapq.heappop(heap)
            if u in routes:
                continue
            routes[u] = routes[pred[u][0]] + (pred[u][1],) if u != src else ()
            for v, hop, ps in adj[u]:
                if v in routes:
                    continue
                k = key + ps * m + 1
                old = best.get(v)
                if old is None or k < old or (k == old and u < pred[v][0]):
                    best[v] = k
                    pred[v] = (u, hop)
                    heapq.heappush(heap, (k, v))
        return routes


def _hops(m: Link | Cell, a: str, b: str, ids: tuple[str, str], medium: str) -> tuple[Hop, Hop]:
    """The hops a -> b (over `m`'s up direction, resource ids[0]) and b -> a (down, ids[1])."""
    return tuple(Hop(x, y, m.name, rid, medium, d.bandwidth_bps, d.latency_s, d.loss.rate, m.jitter_s)
                 for x, y, rid, d in ((a, b, ids[0], m.up), (b, a, ids[1], m.down)))  # type: ignore[return-value]


def _resource(rid: str, link: str, medium: str, src: str, dst: str, d: Direction) -> Resource:
    return Resource(rid, link, medium, src, dst, d.bandwidth_bps, d.latency_s, d.trace)


def _fault_edges(g: nx.Graph, f: Fault) -> frozenset[Edge]:
    """The graph edges a fault takes down: its link's, its cell's memberships, or all of its node's."""
    if f.target == "node":
        return frozenset(frozenset(e) for e in g.edges(f.name))
    return frozenset(frozenset((u, v)) for u, v, name in g.edges(data="link") if name == f.name)
