"""The network graph built from a Scenario, and shortest-latency routes.

Nodes are the scenario's nodes; edges are point-to-point links (full duplex) and cell memberships (station <-> AP,
carried by the cell's shared channel). A route is a list of `Hop`s; each hop names the *resource* whose capacity it
uses: `"<link>:<src>><dst>"` for one direction of a link, `"cell:<cell>"` for every hop through a shared cell.
Two stations of the same cell talk through their access point (two hops, both on the cell's channel).

Routing: least total latency (summed in integer picoseconds, so equal sums tie exactly), then fewest hops, then the
predecessor with the smallest name. Routes are computed once per source (Dijkstra) and cached.
"""

from __future__ import annotations

import heapq
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
    def __init__(self, graph: nx.Graph, resources: list[Resource], flops: dict[str, float],
                 kinds: dict[str, str]) -> None:
        self.graph = graph
        self.resources: tuple[Resource, ...] = tuple(resources)
        self._flops = flops
        self._kinds = kinds
        self.nodes: tuple[str, ...] = tuple(kinds)
        # adjacency: node -> sorted list of (neighbour, Hop), deterministic
        self._adj: dict[str, list[tuple[str, Hop]]] = {n: [] for n in kinds}
        for u, v, data in graph.edges(data=True):
            for a, b in ((u, v), (v, u)):
                if data["medium"] == "cell":
                    rid = f"cell:{data['link']}"
                else:
                    rid = f"{data['link']}:{a}>{b}"
                self._adj[a].append((b, Hop(a, b, data["link"], rid, data["medium"], data["capacity_bps"],
                                            data["latency_s"])))
        for lst in self._adj.values():
            lst.sort(key=lambda x: x[0])
        self._trees: dict[str, dict[str, tuple[str, Hop]]] = {}

    @classmethod
    def from_scenario(cls, sc: Scenario) -> Topology:
        g = nx.Graph()
        kinds: dict[str, str] = {}
        flops: dict[str, float] = {}
        for n in sc.nodes:
            g.add_node(n.name, kind=n.kind, flops=n.flops or 0.0)
            kinds[n.name] = n.kind
            flops[n.name] = n.flops or 0.0
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
        return cls(g, resources, flops, kinds)

    # ------------------------------------------------------------------ queries
    def kind(self, node: str) -> str:
        return self._kinds[node]

    def flops(self, node: str) -> float:
        """The node's compute speed in FLOP/s (0.0 for pure network devices)."""
        try:
            return self._flops[node]
        except KeyError:
            raise SimflError(f"unknown node {node!r}") from None

    def route(self, src: str, dst: str) -> list[Hop]:
        """Hops from src to dst by least latency (deterministic tie-break, see module doc)."""
        return list(self.route_tuple(src, dst))

    def route_tuple(self, src: str, dst: str) -> tuple[Hop, ...]:
        if src not in self._kinds:
            raise SimflError(f"unknown node {src!r}")
        if dst not in self._kinds:
            raise SimflError(f"unknown node {dst!r}")
        tree = self._trees.get(src)
        if tree is None:
            tree = self._trees[src] = self._dijkstra(src)
        if dst == src:
            return ()
        if dst not in tree:
            raise SimflError(f"no route from {src} to {dst}")
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
