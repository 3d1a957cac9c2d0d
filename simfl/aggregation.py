"""Federated averaging (FedAvg) over state dicts: a pure function, no I/O, no model objects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def fedavg(states: Sequence[Mapping[str, torch.Tensor]],
           weights: Sequence[float | int]) -> dict[str, torch.Tensor]:
    """Weighted average of ``states``: sum_i (w_i / sum_j w_j) * state_i, key by key.

    ``weights`` are the clients' sample counts (any non-negative numbers; they are normalised). Every state
    must have the same keys and, per key, the same shape. Accumulation is in float64 on the first state's
    device; each result is cast back to that key's dtype in the first state (integer tensors are rounded
    to the nearest integer first). The inputs are not modified; the result shares no storage with them and
    keeps the first state's key order.
    """
    if len(states) == 0:
        raise ValueError("fedavg needs at least one state")
    if len(weights) != len(states):
        raise ValueError(f"fedavg got {len(states)} states but {len(weights)} weights")
    w = [float(x) for x in weights]
    if any(not x >= 0 for x in w):  # also catches NaN
        raise ValueError(f"fedavg weights must be non-negative numbers, got {list(weights)}")
    total = sum(w)
    if total == 0:
        raise ValueError("fedavg weights sum to zero: nothing to average")
    if total == float("inf"):
        raise ValueError(f"fedavg weights must be finite, got {list(weights)}")
    keys = list(states[0].keys())
    for idx, state in enumerate(states[1:], start=1):
        missing = [k for k in keys if k not in state]
        extra = [k for k in state if k not in states[0]]
        if missing or extra:
            raise ValueError(f"fedavg: state {idx} has different keys from state 0 "
                             f"(missing {missing}, unexpected {extra})")
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key in keys:
            ref = states[0][key]
            if ref.dtype.is_complex:
                raise ValueError(f"fedavg: {key!r} is complex ({ref.dtype}); only real tensors are averaged")
            acc = torch.zeros(ref.shape, dtype=torch.float64, device=ref.device)
            for idx, (state, wi) in enumerate(zip(states, w, strict=True)):
                t = state[key]
                if t.shape != ref.shape:
                    raise ValueError(f"fedavg: {key!r} has shape {tuple(t.shape)} in state {idx} "
                                     f"but {tuple(ref.shape)} in state 0")
                acc += t.detach().to(device=ref.device, dtype=torch.float64) * (wi / total)
            if not ref.dtype.is_floating_point:
                acc = torch.round(acc)
            out[key] = acc.to(ref.dtype)
    return out
