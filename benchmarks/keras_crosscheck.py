"""Cross-check simfl's learning against TensorFlow/Keras on the authors' own shards and test sets.

The paper's numbers came from Keras (github mirqr/FedAD). This script trains the same AE-7 with Keras itself, as
the authors' code does, on the data of ``split = "authors"`` (seed 42), so a simfl figure can be set beside the
framework the paper used. It is not part of simfl (TensorFlow is not in its stack) and needs two environments:

    .venv/bin/python benchmarks/keras_crosscheck.py export                    # the shards, with simfl
    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu scikit-learn
    /tmp/tfvenv/bin/python benchmarks/keras_crosscheck.py local 8             # local baseline, class 8
    /tmp/tfvenv/bin/python benchmarks/keras_crosscheck.py fedavg 6            # FedAvg on the true group of class 6

``local``: a fresh model per client, compile("adam", "mse"), fit(x, x) for up to 40 epochs, batch 32, shuffled,
validation_split 0.1, EarlyStopping(val_loss, patience 3). ``fedavg``: the 9 clients of one class from one initial
model, 10 rounds of 1 then 10 local epochs, each client keeping its compiled model (so its Adam state) and fitting
from the sample-weighted average; each client scored with its own last fit. Scores are L2 reconstruction
distances; AUC-ROC per client on its class's test set, printed with the mean.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

DATA = os.environ.get("KERAS_CROSSCHECK_DATA", "/tmp/keras_crosscheck.npz")
P = 9


def export() -> None:
    from pathlib import Path

    from simfl.config import load_scenario
    from simfl.plan import partition_of

    scenario = load_scenario(Path(__file__).resolve().parent.parent / "topologies" / "paper-90.toml")
    part = partition_of(scenario.experiment, scenario.seed)  # split "authors", split_seed 42
    assert part.p == P, part.p
    arrays = {f"x{s.client}": s.x for s in part.clients}
    for c, (x, out) in part.tests.items():
        arrays[f"tx{c}"], arrays[f"to{c}"] = x, out
    np.savez_compressed(DATA, **arrays)
    print(f"wrote {DATA}: {len(part.clients)} shards and {len(part.tests)} test sets")


def _keras_ae7():
    import tensorflow as tf
    from tensorflow.keras import layers

    m = tf.keras.Sequential([
        layers.Reshape((28, 28, 1)),
        layers.Conv2D(32, 3, activation="relu", padding="same"), layers.MaxPooling2D(2, padding="same"),
        layers.Conv2D(32, 3, activation="relu", padding="same"), layers.MaxPooling2D(2, padding="same"),
        layers.Conv2DTranspose(32, 3, strides=2, activation="relu", padding="same"),
        layers.Conv2DTranspose(32, 3, strides=2, activation="relu", padding="same"),
        layers.Conv2D(1, 3, activation="sigmoid", padding="same"), layers.Flatten(),
    ])
    m.build((None, 784))
    m.compile(optimizer="adam", loss="mse")
    return m


def _auc(model, tx: np.ndarray, out: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(out, np.sqrt(((tx - model.predict(tx, verbose=0)) ** 2).sum(axis=1))))


def _load(c: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    d = np.load(DATA)
    xs = [d[f"x{c * P + j}"].reshape(-1, 784) / 255.0 for j in range(P)]
    return xs, d[f"tx{c}"].reshape(-1, 784) / 255.0, d[f"to{c}"]


def local(c: int) -> None:
    import tensorflow as tf

    xs, tx, out = _load(c)
    aucs, epochs = [], []
    for x in xs:
        m = _keras_ae7()
        h = m.fit(x, x, epochs=40, batch_size=32, shuffle=True, validation_split=0.1, verbose=0,
                  callbacks=[tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=3)])
        aucs.append(_auc(m, tx, out))
        epochs.append(len(h.history["loss"]))
    print(f"class {c} Keras local: mean AUC {np.mean(aucs):.3f} (sd {np.std(aucs, ddof=1):.3f}), epochs {epochs}")


def fedavg(c: int) -> None:
    xs, tx, out = _load(c)
    clients = [_keras_ae7() for _ in xs]
    weights = _keras_ae7().get_weights()
    n = [len(x) for x in xs]
    t0 = time.time()
    for rnd in range(1, 11):
        fits = []
        for m, x in zip(clients, xs, strict=True):
            m.set_weights(weights)
            m.fit(x, x, epochs=1 if rnd == 1 else 10, batch_size=32, shuffle=True, validation_split=0.1, verbose=0)
            fits.append(m.get_weights())
        weights = [sum(k * f[i] for f, k in zip(fits, n, strict=True)) / sum(n) for i in range(len(fits[0]))]
        aucs = [_auc(m, tx, out) for m in clients]
        print(f"round {rnd}: last fits' mean AUC {np.mean(aucs):.3f} ({time.time() - t0:.0f} s)", flush=True)
    print(f"class {c} Keras FedAvg, last fits: mean AUC {np.mean(aucs):.3f} (sd {np.std(aucs, ddof=1):.3f})")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "export":
        export()
    elif cmd in ("local", "fedavg") and len(sys.argv) == 3:
        {"local": local, "fedavg": fedavg}[cmd](int(sys.argv[2]))
    else:
        sys.exit(__doc__)
