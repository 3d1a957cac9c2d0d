"""The association rule, community detection and the partition scores against hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from simfl.communities import association_matrix, find_communities, one_sided, partition_scores

METHODS = ["leiden", "fastgreedy"]


def _adj(n, edges):
    a = np.zeros((n, n), dtype=bool)
    for i, j in edges:
        a[i, j] = a[j, i] = True
    return a


def _clique(members):
    return [(i, j) for i in members for j in members if i < j]


def test_rule_on_hand_made_ratios():
    # tau 0.06 around r_ii = 0.9: [0.846, 0.954]
    r = np.array([[0.90, 0.88, 0.50],
                  [0.87, 0.90, 0.60],
                  [0.50, 0.55, 0.90]])
    side = one_sided(r, 0.06)
    assert side.tolist() == [[False, True, False], [True, False, False], [False, False, False]]
    assert association_matrix(r, 0.06).tolist() == _adj(3, [(0, 1)]).tolist()


def test_both_sides_needed():
    # client 0 accepts 1 (0.89 within 0.9 +- 0.054) but 1 rejects 0 (0.70 outside 0.9 +- 0.054)
    r = np.array([[0.90, 0.89], [0.70, 0.90]])
    assert one_sided(r, 0.06).tolist() == [[False, True], [False, False]]
    assert not association_matrix(r, 0.06).any()


def test_tolerance_is_relative_to_own_ratio():
    # r_ii = 0.5, tau = 0.06: tolerance 0.03, so 0.52 passes and 0.54 fails (an absolute 0.06 would pass it)
    r = np.array([[0.5, 0.52, 0.54], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    assert one_sided(r, 0.06)[0].tolist() == [False, True, False]


def test_bounds_inclusive():
    # r_ii = 0.5, tau = 0.5: bounds 0.25 and 0.75, exact in binary
    r = np.array([[0.5, 0.75, 0.25, 0.7500001], [0.5] * 4, [0.5] * 4, [0.5] * 4])
    assert one_sided(r, 0.5)[0].tolist() == [False, True, True, False]


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, (6, 6), elements=st.floats(0, 1)), st.floats(0, 0.5))
def test_association_matrix_properties(r, tau):
    a = association_matrix(r, tau)
    side = one_sided(r, tau)
    assert a.dtype == bool and np.array_equal(a, a.T) and not a.diagonal().any()
    assert np.array_equal(a, side & side.T)


@pytest.mark.parametrize("method", METHODS)
def test_two_cliques(method):
    adj = _adj(8, _clique([0, 1, 2, 3]) + _clique([4, 5, 6, 7]))
    assert find_communities(adj, method) == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("method", METHODS)
def test_canonical_order_interleaved(method):
    adj = _adj(6, _clique([1, 3, 5]) + _clique([4, 2, 0]))
    assert find_communities(adj, method) == [[0, 2, 4], [1, 3, 5]]


@pytest.mark.parametrize("method", METHODS)
def test_loners_are_singletons(method):
    adj = _adj(5, _clique([1, 2, 3]))
    assert find_communities(adj, method) == [[0], [1, 2, 3], [4]]
    assert find_communities(np.zeros((3, 3), bool), method) == [[0], [1], [2]]
    assert find_communities(np.zeros((0, 0), bool), method) == []


def test_diagonal_ignored():
    adj = _adj(4, _clique([0, 1]) + _clique([2, 3]))
    np.fill_diagonal(adj, True)
    assert find_communities(adj) == [[0, 1], [2, 3]]


def test_leiden_deterministic_with_seed():
    # a ring of 6 cliques of 5, each joined to the next by one edge: modularity splits at the bridges
    edges = []
    for c in range(6):
        edges += _clique(range(5 * c, 5 * c + 5))
        edges.append((5 * c + 4, (5 * c + 5) % 30))
    adj = _adj(30, edges)
    first = find_communities(adj, "leiden", seed=7)
    assert first == find_communities(adj, "leiden", seed=7)
    assert first == [list(range(5 * c, 5 * c + 5)) for c in range(6)]


def test_unknown_method():
    with pytest.raises(ValueError, match="leiden, fastgreedy"):
        find_communities(np.zeros((2, 2), bool), "louvain")


def test_asymmetric_adjacency_rejected():
    a = np.zeros((2, 2), bool)
    a[0, 1] = True
    with pytest.raises(ValueError, match="symmetric"):
        find_communities(a)


def _table2():
    """The paper's Table 2: classes 6, 8, 1, 5, 7, 9 alone, {0, 2, 3, 4} merged; client = class * 9 + j."""
    members = lambda c: list(range(9 * c, 9 * c + 9))  # noqa: E731
    found = [members(c) for c in (6, 8, 1, 5, 7, 9)] + [sum((members(c) for c in (0, 2, 3, 4)), [])]
    truth = [i // 9 for i in range(90)]
    return found, truth


def test_table2_ari_nmi():
    found, truth = _table2()
    ari, nmi = partition_scores(found, truth)
    # Contingency: ten cells of 9. sum C(n_ij, 2) = 10 * 36 = 360; true groups: 10 * 36 = 360;
    # found: 6 * 36 + C(36, 2) = 216 + 630 = 846; C(90, 2) = 4005; expected = 360 * 846 / 4005.
    # ARI = (360 - expected) / ((360 + 846) / 2 - expected) = 1,137,240 / 2,110,455 = 227,448 / 422,091.
    assert ari == pytest.approx(227_448 / 422_091, abs=1e-12)
    assert round(ari, 3) == 0.539  # the paper's figure (its Table 2)
    # found is a coarsening of truth: MI = H(found) = 0.6 ln 10 + 0.4 ln 2.5; H(truth) = ln 10;
    # NMI (arithmetic) = 2 H(found) / (ln 10 + H(found)) = 0.8631
    h = 0.6 * math.log(10) + 0.4 * math.log(2.5)
    assert nmi == pytest.approx(2 * h / (math.log(10) + h), abs=1e-12)


def test_perfect_partition_scores_one():
    truth = [0, 0, 1, 1, 2]
    assert partition_scores([[4], [0, 1], [2, 3]], truth) == pytest.approx((1.0, 1.0))


@pytest.mark.parametrize(("found", "match"), [
    ([[0, 1], [2]], "no community"),
    ([[0, 1], [1, 2, 3]], "two communities"),
    ([[0, 1, 2, 3, 4]], "not one of the 4"),
])
def test_partition_scores_bad_input(found, match):
    with pytest.raises(ValueError, match=match):
        partition_scores(found, [0, 0, 1, 1])
