"""The models of the paper's Table 1 with exact sizes and FLOP counts.

* ``ae5``  phase I convolutional autoencoder (Appendix A.1): 3,217 parameters.
* ``ae7``  phase II convolutional autoencoder (Appendix A.2 with two stride-2 transposed convolutions and
  'same' padding): 28,353 parameters.
* ``flat`` the authors' earlier dense autoencoder [64, 32, 64] on 784 inputs: 105,392 parameters.
* ``ocsvm`` the authors' earlier phase I model, scikit-learn ``OneClassSVM`` (RBF, nu = 0.1): its size
  depends on the support vectors found in training, so its bytes come from the fitted state
  (``state_payload_bytes``).

Inputs are [B, 1, 28, 28] float32 in [0, 1]; outputs the same shape (sigmoid). 'same' padding: stride-2 convs
use padding 1, transposed convs ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1).

FLOPs count 2 per multiply-accumulate of the conv / linear layers (biases, activations and pooling are left
out, under 1%); a training step is taken as 3x the forward pass (forward + two backward products).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

MODEL_NAMES = ("ae5", "ae7", "flat", "ocsvm")
TORCH_MODELS = ("ae5", "ae7", "flat")
BYTES_PER_PARAM = 4
IMAGE_PIXELS = 784


class AE5(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(1, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(8, 16, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 1, 3, padding=1),
            nn.Sigmoid(),
        )


class AE7(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.ConvTranspose2d(32, 32, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 32, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, 3, padding=1),
            nn.Sigmoid(),
        )


class FlatAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 64),
            nn.ReLU(),
            nn.Linear(64, 32),
            nn.ReLU(),
            nn.Linear(32, 64),
            nn.ReLU(),
            nn.Linear(64, 784),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(x.shape[0], 1, 28, 28)


_BUILDERS = {"ae5": AE5, "ae7": AE7, "flat": FlatAE}


def _check(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")


def build_model(name: str) -> nn.Module:
    """A fresh torch model (default PyTorch init from the global RNG). Not for ``ocsvm``."""
    _check(name)
    if name == "ocsvm":
        raise ValueError("ocsvm is a scikit-learn model: train it through learning.TrainJob(model='ocsvm')")
    return _BUILDERS[name]()


def _layer_macs(model: nn.Module, h: int = 28, w: int = 28) -> int:
    """Multiply-accumulates of one forward pass of a sample, walked from the layer shapes."""
    macs = 0
    for layer in model.modules():
        if isinstance(layer, nn.Conv2d):
            kh, kw = layer.kernel_size
            h = (h + 2 * layer.padding[0] - kh) // layer.stride[0] + 1
            w = (w + 2 * layer.padding[1] - kw) // layer.stride[1] + 1
            macs += h * w * layer.out_channels * layer.in_channels * kh * kw // layer.groups
        elif isinstance(layer, nn.ConvTranspose2d):
            kh, kw = layer.kernel_size
            # every input position scatters a Cin x Cout x k x k product
            macs += h * w * layer.in_channels * layer.out_channels * kh * kw // layer.groups
            h = (h - 1) * layer.stride[0] - 2 * layer.padding[0] + kh + layer.output_padding[0]
            w = (w - 1) * layer.stride[1] - 2 * layer.padding[1] + kw + layer.output_padding[1]
        elif isinstance(layer, nn.MaxPool2d):
            h //= 2
            w //= 2
        elif isinstance(layer, nn.Linear):
            macs += layer.in_features * layer.out_features
    return macs


_MACS: dict[str, int] = {}


def param_count(name: str) -> int:
    """Exact trainable parameter count (ocsvm: raises, its size depends on the fitted model)."""
    _check(name)
    if name == "ocsvm":
        raise ValueError("ocsvm has no fixed size: use state_payload_bytes(trained_state)")
    return sum(p.numel() for p in build_model(name).parameters())


def payload_bytes(name: str) -> int:
    """Bytes of the model on the wire: 4 bytes per parameter (float32)."""
    return BYTES_PER_PARAM * param_count(name)


def state_payload_bytes(state: Mapping[str, object]) -> int:
    """Bytes of a trained state as stored: the sum of its tensors'/arrays' sizes (any model, ocsvm too)."""
    total = 0
    for value in state.values():
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        else:
            total += np.asarray(value).nbytes
    return int(total)


def ocsvm_flops_per_sample(n_support: int, train: bool = False, n_train: int | None = None) -> float:
    """RBF decision function: per support vector ~3 FLOPs a pixel (difference, square, sum) plus the exp and
    the weighted sum. Training (SMO) is counted as the kernel rows it needs: ~n_train kernel evaluations per
    sample."""
    per_kernel = 3 * IMAGE_PIXELS + 4
    if train:
        if n_train is None:
            raise ValueError("ocsvm training FLOPs need n_train")
        return float(per_kernel * n_train)
    return float(per_kernel * n_support)


def flops_per_sample(name: str, train: bool = False) -> float:
    """Forward FLOPs per sample from the layer shapes (train=True: 3x forward). ocsvm: see
    ``ocsvm_flops_per_sample`` (depends on the fitted model)."""
    _check(name)
    if name == "ocsvm":
        raise ValueError("ocsvm FLOPs depend on the fitted model: use ocsvm_flops_per_sample(n_support)")
    if name not in _MACS:
        _MACS[name] = _layer_macs(build_model(name))
    forward = 2.0 * _MACS[name]
    return 3.0 * forward if train else forward
