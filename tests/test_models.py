"""Model sizes and FLOPs against hand counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simfl.models import MODEL_NAMES, build_model, flops_per_sample, param_count, payload_bytes, state_payload_bytes


def conv(cin, cout, k=3):
    return cin * cout * k * k + cout


# Appendix A, layer by layer.
AE5 = conv(1, 16) + conv(16, 8) + conv(8, 8) + conv(8, 16) + conv(16, 1)
AE7 = conv(1, 32) + conv(32, 32) + conv(32, 32) + conv(32, 32) + conv(32, 1)
FLAT = (784 * 64 + 64) + (64 * 32 + 32) + (32 * 64 + 64) + (64 * 784 + 784)


def test_hand_counts_match_design():
    assert (AE5, AE7, FLAT) == (3217, 28353, 105392)


@pytest.mark.parametrize(("name", "count"), [("ae5", AE5), ("ae7", AE7), ("flat", FLAT)])
def test_param_counts_and_payload(name, count):
    assert param_count(name) == count
    assert payload_bytes(name) == 4 * count
    net = build_model(name)
    assert sum(p.numel() for p in net.state_dict().values()) == count  # no buffers hide in the payload
    assert state_payload_bytes(net.state_dict()) == 4 * count


# Appendix A: the output of each conv / linear layer for one 28x28 image ([C, H, W]; the FLOP counts below use them)
LAYER_SHAPES = {
    "ae5": [(16, 14, 14), (8, 7, 7), (8, 14, 14), (16, 28, 28), (1, 28, 28)],
    "ae7": [(32, 28, 28), (32, 14, 14), (32, 14, 14), (32, 28, 28), (1, 28, 28)],  # max-pooling after the first two
    "flat": [(64,), (32,), (64,), (784,)],
}


@pytest.mark.parametrize("name", ["ae5", "ae7", "flat"])
def test_layer_shapes_and_sigmoid_output(name):
    net = build_model(name)
    shapes = []
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d | torch.nn.Linear):
            m.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[1:])))
    with torch.no_grad():
        y = net(torch.rand(3, 1, 28, 28))
    assert shapes == LAYER_SHAPES[name] and y.shape == (3, 1, 28, 28)
    # all weights zero: every layer outputs its bias, the image is sigmoid(last bias) everywhere
    state = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
    last_bias = list(state)[-1]
    state[last_bias] = torch.full_like(state[last_bias], 0.75)
    net.load_state_dict(state)
    with torch.no_grad():
        y = net(torch.rand(2, 1, 28, 28))
    assert torch.allclose(y, torch.full((2, 1, 28, 28), 1 / (1 + float(np.exp(-0.75)))), rtol=1e-6, atol=0)


def test_flops_from_layer_shapes():
    # 2 FLOPs per MAC. AE-5: conv 14x14x16x9, conv 7x7x8x16x9, convT 7x7x8x8x9 (per input position),
    # convT 14x14x8x16x9, conv 28x28x16x9.
    ae5 = 2 * (14 * 14 * 16 * 9 + 7 * 7 * 8 * 144 + 7 * 7 * 64 * 9 + 14 * 14 * 128 * 9 + 784 * 16 * 9)
    ae7 = 2 * (784 * 32 * 9 + 196 * 32 * 32 * 9 + 49 * 32 * 32 * 9 + 196 * 32 * 32 * 9 + 784 * 32 * 9)
    flat = 2 * (784 * 64 + 64 * 32 + 32 * 64 + 64 * 784)
    assert flops_per_sample("ae5") == ae5 == 903168
    assert flops_per_sample("ae7") == ae7 == 9031680
    assert flops_per_sample("flat") == flat
    for name in ("ae5", "ae7", "flat"):
        assert flops_per_sample(name, train=True) == 3 * flops_per_sample(name)


def test_ocsvm_has_no_fixed_size():
    assert "ocsvm" in MODEL_NAMES
    with pytest.raises(ValueError):
        param_count("ocsvm")
    state = {"support_vectors": np.zeros((5, 784), np.float32), "dual_coef": np.zeros(5, np.float32),
             "intercept": np.zeros(1, np.float32), "gamma": np.zeros(1, np.float32)}
    assert state_payload_bytes(state) == 4 * (5 * 784 + 5 + 1 + 1)
    with pytest.raises(ValueError):
        build_model("nope")
