"""The network graph built from a Scenario, shortest-latency routes, and connectivity.

The graph is a networkx `Graph`, the one home of the network's structure: nodes are the scenario's nodes (in
declaration order, with their `kind` and compute speed `flops`); edges are point-to-point links (full duplex) and
cell memberships (station <-> AP, carried by the cell's shared channel), with `link`, `medium`, `capacity_bps` and
`latency_s`. A route is a list of `Hop`s; each hop names the *resource* whose capacity it uses:
`"<link>:<src>><dst>"` for one direction of a link, `"cell:<cell>"` for every hop through a shared cell. Two
stations of the same cell talk through their access point (two hops, both on the cell's channel).

Routing: least total latency (summed in integer picoseconds, so equal sums tie exactly), then fewest hops, then the
predecessor with the smallest name. Routes are computed once per source (Dijkstra over the graph's adjacency, kept
here because networkx's shortest paths have no such tie-break) and cached.

Connectivity comes from the graph: `reachable(node)`, `components()`; `without(links)` is the topology with links
or cells out of service (an outage): the same nodes and resources, routes recomputed around them.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import networkx as nx

from simfl.config import Scenario
from simfl.errors import SimflError

__all__ = ["Hop", "Resource", "Topology"]


@dataclass(frozen=True, slots=True)
class Hop:
    src: str
    dst: str
    link: str  # link name, or cell name for a cell hop
    resource: str  # id of the capacity this hop uses
    medium: str  # "p2p" or "cell"
    capacity_bps: float
    latency_s: float


@dataclass(frozen=True, slots=True)
class Resource:
    """One capacity that transfers share: a link direction or a whole cell."""

    id: str
    link: str
    medium: str  # "p2p" or "cell"
    src: str  # the link direction's sender; for a cell, its access point
    dst: str  # the link direction's receiver; for a cell, "*"
    capacity_bps: float
    latency_s: float


class Topology:
    """Nodes, links and cells of a scenario as a networkx graph; routes and connectivity over it."""

    def __init__(self, graph: nx.Graph, resources: Sequence[Resource]) -> None:
        self.graph = graph
        self.resources: tuple[Resource, ...] = tuple(resources)
        self.nodes: tuple[str, ...] = tuple(graph.nodes)
        # adjacency: node -> list of (neighbour, Hop) sorted by the neighbour's name, deterministic
        self._adj: dict[str, list[tuple[str, Hop]]] = {
            a: [(b, _hop(a, b, data)) for b, data in sorted(nbrs.items())] for a, nbrs in graph.adjacency()}
        self._trees: dict[str, dict[str, tuple[str, Hop]]] = {}

    @classmethod
    def from_scenario(cls, sc: Scenario) -> Topology:
        g = nx.Graph()
        for n in sc.nodes:
            g.add_node(n.name, kind=n.kind, flops=n.flops or 0.0)
        resources: list[Resource] = []
        for ln in sc.links:
            g.add_edge(ln.a, ln.b, link=ln.name, medium="p2p", capacity_bps=ln.bandwidth_bps, latency_s=ln.latency_s)
            resources.append(Resource(f"{ln.name}:{ln.a}>{ln.b}", ln.name, "p2p", ln.a, ln.b, ln.bandwidth_bps,
                                      ln.latency_s))
            resources.append(Resource(f"{ln.name}:{ln.b}>{ln.a}", ln.name, "p2p", ln.b, ln.a, ln.bandwidth_bps,
                                      ln.latency_s))
        cells = {c.name: c for c in sc.cells}
        for c in sc.cells:
            resources.append(Resource(f"cell:{c.name}", c.name, "cell", c.ap, "*", c.bandwidth_bps, c.latency_s))
        for n in sc.nodes:
            if n.cell is not None:
                c = cells[n.cell]
                g.add_edge(n.name, c.ap, link=c.name, medium="cell", capacity_bps=c.bandwidth_bps,
                           latency_s=c.latency_s)
        return cls(g, resources)

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
        g = self.graph.copy()
        g.remove_edges_from([(u, v) for u, v, name in self.graph.edges(data="link") if name in down])
        return Topology(g, self.resources)

    def route(self, src: str, dst: str) -> list[Hop]:
        """Hops from src to dst by least latency (deterministic tie-break, see module doc)."""
        return list(self.route_tuple(src, dst))

    def route_tuple(self, src: str, dst: str) -> tuple[Hop, ...]:
        tree = self._trees.get(src)
        if tree is None:
            self._node(src)
            tree = self._trees[src] = self._dijkstra(src)
        if dst == src:
            return ()
        if dst not in tree:
            self._node(dst)
            raise SimflError(f"no route from {src} to {dst}: no chain of working links and cells joins them ({src} "
                             f"reaches {len(self.reachable(src)) - 1} other node(s))")
        hops = []
        v = dst
        while v != src:
            u, hop = tree[v]
            hops.append(hop)
            v = u
        hops.reverse()
        return tuple(hops)

    def path_latency(self, src: str, dst: str) -> float:
        return sum(h.latency_s for h in self.route_tuple(src, dst))

    def _dijkstra(self, src: str) -> dict[str, tuple[str, Hop]]:
        best: dict[str, tuple[int, int]] = {src: (0, 0)}
        pred: dict[str, tuple[str, Hop]] = {}
        done: set[str] = set()
        heap = [(0, 0, src)]
        adj = self._adj
        while heap:
            d, h, u = heapq.heappop(heap)
            if u in done:
                continue
            done.add(u)
            for v, hop in adj[u]:
                if v in done:
                    continue
                key = (d + round(hop.latency_s * 1e12), h + 1)
                old = best.get(v)
                if old is None or key < old or (key == old and u < pred[v][0]):
                    best[v] = key
                    pred[v] = (u, hop)
                    heapq.heappush(heap, (key[0], key[1], v))
        return pred


def _hop(a: str, b: str, edge: dict) -> Hop:
    """The hop a -> b over a graph edge: a link direction, or a trip through a cell."""
    rid = f"cell:{edge['link']}" if edge["medium"] == "cell" else f"{edge['link']}:{a}>{b}"
    return Hop(a, b, edge["link"], rid, edge["medium"], edge["capacity_bps"], edge["latency_s"])
