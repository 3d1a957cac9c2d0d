"""Phase I's grouping: the association rule, the association graph, its communities, and their scores.

The association rule is the authors' (github mirqr/FedAD, ``datautil.in_range`` and
``Dev.get_devs_federated``): with ``r[i, j]`` the share of client i's samples that model j (with j's own
threshold) calls inliers, client i's one-sided result about j is

    r[i, i] - tau * r[i, i] <= r[i, j] <= r[i, i] + tau * r[i, i]

i.e. ``|r[i, j] - r[i, i]| <= tau * r[i, i]``: a tolerance *relative* to client i's own ratio (about 1 - d),
evaluated in that form so that boundary cases round as in the authors' code. i and j are associated iff
both one-sided results hold. The graph is unweighted and undirected; loners (no association) become
singleton communities.
"""

from __future__ import annotations

from collections.abc import Sequence

import igraph as ig
import leidenalg
import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

METHODS = ("leiden", "fastgreedy")


def _square(r: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(r)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {a.shape}")
    return a


def one_sided(r: np.ndarray, tau: float) -> np.ndarray:
    """Each client's own side of the rule: ``out[i, j]`` is what client i sends to peer j (1 bit).

    ``out[i, j] = r[i,i] - tau r[i,i] <= r[i,j] <= r[i,i] + tau r[i,i]``; the diagonal is False (a client
    does not associate with itself through an edge).
    """
    a = _square(r, "r").astype(np.float64)
    if not tau >= 0:
        raise ValueError(f"tau must be >= 0, got {tau!r}")
    own = np.diagonal(a)[:, None]
    out = (own - own * tau <= a) & (a <= own + own * tau)
    np.fill_diagonal(out, False)
    return out


def association_matrix(r: np.ndarray, tau: float) -> np.ndarray:
    """The association graph's adjacency: i ~ j iff both one-sided results hold. Symmetric, diagonal False."""
    side = one_sided(r, tau)
    return side & side.T


def _canonical(groups: Sequence[Sequence[int]]) -> list[list[int]]:
    return sorted((sorted(int(v) for v in g) for g in groups if len(g)), key=lambda g: g[0])


def find_communities(adj: np.ndarray, method: str = "leiden", seed: int = 0) -> list[list[int]]:
    """Communities of the association graph, canonical: members sorted, communities by their lowest member.

    ``method``: "leiden" (leidenalg, modularity, seeded: deterministic) or "fastgreedy" (igraph's greedy
    modularity, the authors' choice; deterministic). Loners (degree 0) are singleton communities. ``adj``
    must be symmetric; its diagonal is ignored.
    """
    if method not in METHODS:
        raise ValueError(f"unknown community method {method!r}; valid: {', '.join(METHODS)}")
    a = _square(adj, "adj").astype(bool)
    if not np.array_equal(a, a.T):
        raise ValueError("adj must be symmetric (the association graph is undirected)")
    n = a.shape[0]
    edges = [(int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(a, k=1)), strict=True)]
    if not edges:
        return [[i] for i in range(n)]
    g = ig.Graph(n=n, edges=edges, directed=False)
    if method == "leiden":
        partition = leidenalg.find_partition(g, leidenalg.ModularityVertexPartition, seed=seed)
        membership = list(partition.membership)
    else:
        membership = list(g.community_fastgreedy().as_clustering().membership)
    groups: dict[int, list[int]] = {}
    for v, c in enumerate(membership):
        # a loner is its own community whatever label the algorithm gave it
        groups.setdefault(c if g.degree(v) else -1 - v, []).append(v)
    return _canonical(list(groups.values()))


def partition_scores(found: Sequence[Sequence[int]], truth_labels: Sequence[int]) -> tuple[float, float]:
    """(ARI, NMI) of ``found`` (lists of client IDs covering 0..n-1 once) against the true labels.

    scikit-learn's ``adjusted_rand_score`` and ``normalized_mutual_info_score`` (arithmetic mean).
    """
    n = len(truth_labels)
    labels = [-1] * n
    for c, members in enumerate(found):
        for m in members:
            if not 0 <= m < n:
                raise ValueError(f"client {m} is not one of the {n} clients")
            if labels[m] != -1:
                raise ValueError(f"client {m} is in two communities")
            labels[m] = c
    if -1 in labels:
        raise ValueError(f"client {labels.index(-1)} is in no community")
    truth = list(truth_labels)
    return float(adjusted_rand_score(truth, labels)), float(normalized_mutual_info_score(truth, labels))
