"""FedAvg on hand-made tensors with hand-computed averages."""

from __future__ import annotations

import pytest
import torch

from simfl.aggregation import fedavg


def test_weighted_average_by_sample_counts():
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.0]])}
    b = {"w": torch.tensor([3.0, 6.0]), "b": torch.tensor([[4.0]])}
    out = fedavg([a, b], [1, 3])
    # 0.25 * [1, 2] + 0.75 * [3, 6] = [2.5, 5.0]; 0.25 * 0 + 0.75 * 4 = 3
    assert torch.equal(out["w"], torch.tensor([2.5, 5.0]))
    assert torch.equal(out["b"], torch.tensor([[3.0]]))
    assert list(out) == ["w", "b"]


def test_three_clients_sample_counts():
    states = [{"x": torch.tensor([600.0])}, {"x": torch.tensor([0.0])}, {"x": torch.tensor([-200.0])}]
    # (600 * 600 + 200 * 0 + 200 * -200) / 1000 = (360,000 - 40,000) / 1000 = 320
    out = fedavg(states, [600, 200, 200])
    assert out["x"].item() == 320.0
    # weights are normalised: the same with fractions of the total
    assert fedavg(states, [0.6, 0.2, 0.2])["x"].item() == pytest.approx(320.0, abs=1e-4)


def test_dtype_kept_and_float64_accumulation():
    a = {"w": torch.tensor([1.0], dtype=torch.float16)}
    b = {"w": torch.tensor([2.0], dtype=torch.float16)}
    out = fedavg([a, b], [1, 1])
    assert out["w"].dtype == torch.float16 and out["w"].item() == 1.5
    # 1e8 + 1 and 1e8 - 1 are exact in float64; float32 states would lose them, float64 ones keep them
    c = {"w": torch.tensor([1e8 + 1], dtype=torch.float64)}
    d = {"w": torch.tensor([1e8 + 3], dtype=torch.float64)}
    assert fedavg([c, d], [1, 1])["w"].item() == 1e8 + 2


def test_integer_tensors_rounded():
    a = {"n": torch.tensor([1, 0]), "f": torch.tensor([0.0])}
    b = {"n": torch.tensor([4, 1]), "f": torch.tensor([1.0])}
    out = fedavg([a, b], [1, 2])
    # [1/3 + 8/3, 0 + 2/3] = [3, 0.667] -> [3, 1]
    assert out["n"].dtype == torch.int64 and out["n"].tolist() == [3, 1]


def test_inputs_untouched_and_no_shared_storage():
    a = {"w": torch.tensor([1.0, 2.0])}
    out = fedavg([a], [5])
    assert torch.equal(out["w"], torch.tensor([1.0, 2.0]))
    out["w"][0] = 99.0
    assert a["w"][0].item() == 1.0


def test_zero_weight_client_ignored():
    a = {"w": torch.tensor([1.0])}
    b = {"w": torch.tensor([100.0])}
    assert fedavg([a, b], [2, 0])["w"].item() == 1.0


@pytest.mark.parametrize(("states", "weights", "match"), [
    ([], [], "at least one"),
    ([{"w": torch.zeros(1)}], [1, 2], "1 states but 2 weights"),
    ([{"w": torch.zeros(1)}, {"w": torch.zeros(1)}], [0, 0], "sum to zero"),
    ([{"w": torch.zeros(1)}, {"w": torch.zeros(1)}], [1, -1], "non-negative"),
    ([{"w": torch.zeros(1)}, {"w": torch.zeros(1)}], [1, float("nan")], "non-negative"),
    ([{"w": torch.zeros(1)}, {"v": torch.zeros(1)}], [1, 1], r"missing \['w'\], unexpected \['v'\]"),
    ([{"w": torch.zeros(1)}, {"w": torch.zeros(1), "v": torch.zeros(1)}], [1, 1], "unexpected"),
    ([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}], [1, 1], "shape"),
])
def test_bad_input(states, weights, match):
    with pytest.raises(ValueError, match=match):
        fedavg(states, weights)
