"""Fashion-MNIST: IDX loading (numpy only), the authors' client partition and the per-class test sets.

The partition follows the authors' public code (github mirqr/FedAD, ``datautil.partition``), made balanced
and valid for any number of clients per class ``p``, class subset and outlier fraction ``0 < d < 0.5``:

* Only the chosen ``classes`` take part (inliers and outliers alike).
* Per chosen class, a random ``floor((1-d) * N_c)`` of its training images are the inlier source, split into
  ``p`` disjoint chunks whose sizes differ by at most one (``np.array_split``); the other ``ceil(d * N_c)``
  images form that class's share of the outlier pool. (The authors sample ``1 - outlier_fraction`` of the
  data set as the inlier source: with d = 0.1 this is a 90% / 10% split; tying the pool to
  ``d`` keeps it large enough for every ``d`` below 0.5.)
* A client holding ``n_in`` inliers adds ``floor(d * n_in / (1 - d))`` outliers (computed in exact rational
  arithmetic on ``d``'s decimal form), so its outlier fraction is ``d`` rounded down. Outliers are drawn
  without replacement from the pool of the OTHER chosen classes, mixed: the outliers of one inlier class are
  spread as evenly as possible over the other classes (remainders rotate cyclically so every source class
  gives the same total), then shuffled and dealt to the class's clients. With d = 0.1, p = 9 and 10 classes
  each client holds 600 inliers + 66 outliers = 666 samples.
* Test set per inlier class: all of that class's test images plus ``floor(d * n / (1 - d))`` test images of
  the other chosen classes, spread evenly over them and drawn without replacement; shared by the class's
  clients.

Everything is drawn from one ``numpy.random.Generator`` seeded with ``seed``: same inputs, same partition.

``split="authors"`` instead repeats the authors' ``datautil.partition`` draw for draw (pandas' ``sample`` with an
integer ``random_state`` is numpy's legacy ``RandomState(seed)``, fresh at every call, taking
``permutation(n)[:size]``), so with their seed (42) it gives the very shards and test sets behind the paper's
numbers: a random ``1 - d`` of all the chosen classes' images is the inlier source (about, not exactly, 90% of
each class), chunked per class in the sampled order; each client's outliers are drawn from the rest, which shrinks
client after client (the last ones take what is left); the test sets are the same function with one client per
class on the test images, so a class's test set is about 90% of its test images plus outliers from a shared
10% pool (the last class gets fewer).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from simfl.errors import SimflError
from simfl.schema import SPLITS

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "SIMFL_DATA"
FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
N_CLASSES = 10
TRAIN_PER_CLASS = 6000  # Fashion-MNIST's training images per class (and 1,000 test images)


class DataNotFoundError(SimflError):
    """No directory with the four Fashion-MNIST IDX files was found."""


class DataFormatError(SimflError):
    """An IDX file is unreadable or has the wrong shape or labels."""


def missing_files(directory: str | Path) -> list[str]:
    """Which of the four IDX files ``directory`` lacks."""
    return [name for name in FILES.values() if not (Path(directory) / name).is_file()]


def _has_files(directory: Path) -> bool:
    return not missing_files(directory)


def find_data_dir(explicit: str | Path | None = None) -> Path:
    """The folder with the four IDX .gz files: ``explicit`` (the scenario's experiment.data_dir) if given, else
    ``$SIMFL_DATA`` if set, else Debian's. A folder that was given but lacks the files is an error naming it and
    where it came from; only with nothing given is the default folder used."""
    env = os.environ.get(ENV_VAR)
    if explicit is not None and str(explicit) != "":
        origin, directory = "experiment.data_dir", Path(explicit).expanduser()
    elif env:
        origin, directory = f"${ENV_VAR}", Path(env).expanduser()
    else:
        origin, directory = "default", DEFAULT_DATA_DIR
    missing = missing_files(directory)
    if not missing:
        return directory
    if origin != "default":
        raise DataNotFoundError(
            f"{origin} = {directory}: this folder lacks the Fashion-MNIST file(s) {', '.join(missing)}; point "
            f"{origin} at a folder holding the four IDX .gz files ({', '.join(FILES.values())})"
            + (f", or unset it to use {DEFAULT_DATA_DIR}" if origin == f"${ENV_VAR}" else "")
        )
    raise DataNotFoundError(
        f"Fashion-MNIST not found: {DEFAULT_DATA_DIR} (the default folder) lacks {', '.join(missing)}. To get "
        "the data either install Debian's package (sudo apt-get install dataset-fashion-mnist, which puts them "
        f"there), or point [experiment].data_dir in the scenario (or the {ENV_VAR} environment variable) at a "
        f"folder holding the four IDX .gz files ({', '.join(FILES.values())})."
    )


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def data_fingerprint(directory: str | Path) -> dict[str, str]:
    """SHA-256 (hex) of each of the four IDX files in ``directory``, by file name; hashes are cached per process
    by (path, size, modification time)."""
    out = {}
    for name in sorted(FILES.values()):
        f = Path(directory) / name
        try:
            st = f.stat()
            k = (str(f.resolve()), st.st_size, st.st_mtime_ns)
            if k not in _FILE_HASHES:
                _FILE_HASHES[k] = hashlib.sha256(f.read_bytes()).hexdigest()
        except OSError as e:
            raise DataNotFoundError(f"cannot read {f}: {e}") from None
        out[name] = _FILE_HASHES[k]
    return out


@dataclass(frozen=True)
class FashionMNIST:
    x_train: np.ndarray  # uint8 [60000, 28, 28]
    y_train: np.ndarray  # uint8 [60000]
    x_test: np.ndarray  # uint8 [10000, 28, 28]
    y_test: np.ndarray  # uint8 [10000]


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataFormatError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataFormatError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + math.prod(dims):
        raise DataFormatError(f"{path}: size {len(raw)} bytes does not match its header dimensions {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


_CACHE: dict[Path, FashionMNIST] = {}


def load_fashion_mnist(directory: str | Path) -> FashionMNIST:
    """Parse the four IDX files in ``directory`` (cached per process); check shapes and label ranges."""
    directory = Path(directory).resolve()
    if directory in _CACHE:
        return _CACHE[directory]
    if not _has_files(directory):
        raise DataNotFoundError(
            f"{directory} does not hold the four Fashion-MNIST IDX files ({', '.join(FILES.values())}); "
            "install Debian's dataset-fashion-mnist or point [experiment].data_dir / "
            f"${ENV_VAR} at a folder with them."
        )
    arrays = {key: _read_idx(directory / name) for key, name in FILES.items()}
    for split, n in (("train", 60000), ("test", 10000)):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.shape != (n, 28, 28) or y.shape != (n,):
            raise DataFormatError(
                f"{directory}: {split} images/labels have shapes {x.shape}/{y.shape}, "
                f"expected ({n}, 28, 28)/({n},)"
            )
        if int(y.max()) >= N_CLASSES:
            raise DataFormatError(f"{directory}: {split} labels outside 0..9 (max {int(y.max())})")
    for arr in arrays.values():
        arr.setflags(write=False)
    fm = FashionMNIST(**arrays)
    _CACHE[directory] = fm
    return fm


@dataclass(frozen=True)
class ClientShard:
    client: int
    inlier_class: int
    x: np.ndarray  # uint8 [N, 28, 28], shuffled
    labels: np.ndarray  # int64 [N], true class of each sample
    is_outlier: np.ndarray  # bool [N]
    index: np.ndarray  # int64 [N], row of each sample in the training set


@dataclass(frozen=True)
class Partition:
    classes: tuple[int, ...]
    p: int
    d: float
    seed: int
    clients: tuple[ClientShard, ...]  # client i has inlier class classes[i // p]
    tests: dict[int, tuple[np.ndarray, np.ndarray]]  # inlier class -> (x uint8 [M,28,28], is_outlier [M])

    @property
    def n_clients(self) -> int:
        return len(self.clients)

    def capped(self, n: int | None) -> Partition:
        """The same partition with each client's shard cut to its first ``n`` samples (None: unchanged). The
        shards are shuffled, so the cut keeps their mix of inliers and outliers up to sampling."""
        if n is None or all(len(s.x) <= n for s in self.clients):
            return self
        cut = tuple(dataclasses.replace(s, x=s.x[:n], labels=s.labels[:n], is_outlier=s.is_outlier[:n],
                                        index=s.index[:n]) for s in self.clients)
        return dataclasses.replace(self, clients=cut)

    def true_groups(self) -> list[list[int]]:
        """Client ids grouped by inlier class, in ``classes`` order (the ideal partition)."""
        return [list(range(k * self.p, (k + 1) * self.p)) for k in range(len(self.classes))]


def outliers_for(n_inliers: int, d: float) -> int:
    """floor(d * n / (1 - d)) evaluated exactly on d's decimal form (0.1 -> 1/10)."""
    frac = Fraction(repr(float(d)))
    return math.floor(frac * n_inliers / (1 - frac))


def _spread(total: int, k: int, offset: int) -> list[int]:
    """``total`` split over ``k`` slots as evenly as possible; the remainder to slots offset, offset+1, ..."""
    base, rem = divmod(total, k)
    counts = [base] * k
    for j in range(rem):
        counts[(offset + j) % k] += 1
    return counts


def min_shard(val_fraction: float) -> int:
    """The fewest samples a shard needs to keep one training sample after the validation split, which trains on
    the first ``floor(n * (1 - val_fraction) + 1e-9)`` samples (``learning_worker.split_indices``; a test checks
    the two agree)."""
    if val_fraction <= 0:
        return 1
    n = max(1, math.floor(1 / (1.0 - val_fraction)) - 1)
    while math.floor(n * (1.0 - val_fraction) + 1e-9) < 1:
        n += 1
    return n


def smallest_shard(n_classes: int, p: int, d: float, split: str) -> int:
    """Samples of the smallest client shard with ``p`` clients per class of ``n_classes`` classes of
    TRAIN_PER_CLASS images: exact for "balanced"; for "authors" an upper bound (its random draw fixes the class
    sizes, of which the smallest is at most the mean)."""
    if split == "balanced":
        chunk = math.floor((1 - Fraction(repr(float(d)))) * TRAIN_PER_CLASS) // p
        return chunk + outliers_for(chunk, d)
    rows = TRAIN_PER_CLASS * n_classes
    chunk = round((1.0 - d) * rows) // n_classes // p  # as _authors_draw: m1 rows, chunked per class
    return chunk + math.floor(d * (chunk / (1 - d)))


def _check_args(classes: Sequence[int], p: int, d: float) -> tuple[int, ...]:
    cls = tuple(int(c) for c in classes)
    if len(cls) < 2 or len(set(cls)) != len(cls) or any(not 0 <= c < N_CLASSES for c in cls):
        raise SimflError(f"classes must be at least 2 distinct labels in 0..9, got {list(classes)}")
    if int(p) != p or p < 1:
        raise SimflError(f"p (clients per inlier class) must be a positive integer, got {p}")
    if not 0 < d < 0.5:
        raise SimflError(f"outlier fraction d must satisfy 0 < d < 0.5, got {d}")
    return cls


def _shard(fm: FashionMNIST, client: int, inlier_class: int, index: np.ndarray) -> ClientShard:
    """Client ``client``'s shard: the training images at rows ``index`` (in that order)."""
    labels = fm.y_train[index].astype(np.int64)
    return ClientShard(client=client, inlier_class=inlier_class, x=fm.x_train[index], labels=labels,
                       is_outlier=labels != inlier_class, index=index)


def _authors_draw(y: np.ndarray, cls: Sequence[int], p: int, d: float, seed: int) -> list[list[np.ndarray]]:
    """Rows of ``y`` per client, [class][j], as the authors' ``datautil.partition(x, y, p, d, seed)`` picks them
    (module docstring), restricted to the labels in ``cls``; each client's rows in their shuffled order."""
    rows = np.flatnonzero(np.isin(y, cls))  # the data frame, in file order

    perms: dict[int, np.ndarray] = {}  # a fresh RandomState(seed) per call: its permutation depends on n only

    def sample(n_rows: int, size: int) -> np.ndarray:  # DataFrame.sample(n=size, random_state=seed) positions
        if n_rows not in perms:
            perms[n_rows] = np.random.RandomState(seed).permutation(n_rows)
        return perms[n_rows][:size]

    m1 = rows[sample(len(rows), round((1.0 - d) * len(rows)))]
    m2 = np.setdiff1d(rows, m1)  # df.drop(m1.index) keeps file order
    chunks = {c: np.array_split(m1[y[m1] == c], p) for c in cls}
    out: list[list[np.ndarray]] = []
    for c in cls:
        mine = []
        for ii in chunks[c]:
            n_oo = math.floor(d * (len(ii) / (1 - d)))
            cand = m2[y[m2] != c]
            oo = cand[sample(len(cand), min(n_oo, len(cand)))]  # too few left: all of them, shuffled
            if len(oo):
                m2 = m2[~np.isin(m2, oo)]
            dd = np.concatenate([ii, oo])
            mine.append(dd[sample(len(dd), len(dd))])
        out.append(mine)
    return out


def _authors_partition(fm: FashionMNIST, cls: tuple[int, ...], p: int, d: float, seed: int) -> Partition:
    draw = _authors_draw(fm.y_train.astype(np.int64), cls, p, d, seed)
    clients = [_shard(fm, a * p + j, c, index) for a, (c, mine) in enumerate(zip(cls, draw, strict=True))
               for j, index in enumerate(mine)]
    y_test = fm.y_test.astype(np.int64)
    tests = {}
    for c, (index,) in zip(cls, _authors_draw(y_test, cls, 1, d, seed), strict=True):
        out = y_test[index] != c
        if out.all() or not out.any():
            lack = "inliers" if out.all() else "outliers"
            raise SimflError(f"split 'authors': the test set of class {c} has no {lack} (d={d}, classes={list(cls)}); "
                             'use split = "balanced" or a larger d')
        tests[c] = (fm.x_test[index], out)
    return Partition(classes=cls, p=p, d=float(d), seed=int(seed), clients=tuple(clients), tests=tests)


def make_partition(
    fm: FashionMNIST, classes: Sequence[int], p: int, d: float, seed: int, split: str = "balanced",
    min_samples: int = 1,
) -> Partition:
    """``p`` clients per class of ``classes``, outlier fraction d (module docstring); ``split`` "balanced" (the
    authors' scheme, balanced) or "authors" (their exact draw). Every shard must hold ``min_samples`` samples (see
    `min_shard`), else a SimflError naming experiment.clients_per_class."""
    cls = _check_args(classes, p, d)
    p = int(p)
    if split not in SPLITS:
        raise SimflError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if split == "authors":
        return _enough(_authors_partition(fm, cls, p, d, seed), min_samples)
    return _enough(_balanced_partition(fm, cls, p, d, seed), min_samples)


def _enough(part: Partition, min_samples: int) -> Partition:
    small = min(part.clients, key=lambda s: len(s.x))
    if len(small.x) < min_samples:
        raise SimflError(
            f"experiment.clients_per_class = {part.p}: too many clients per class for this draw (split, "
            f"split_seed): client {small.client} (class {small.inlier_class}) gets {len(small.x)} samples and needs "
            f"at least {min_samples} to keep one for training after the validation split; use fewer clients per "
            "class or a smaller val_fraction"
        )
    return part


def _balanced_partition(fm: FashionMNIST, cls: tuple[int, ...], p: int, d: float, seed: int) -> Partition:
    k = len(cls)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x51F1]))
    y_train = fm.y_train.astype(np.int64)

    chunks: dict[int, list[np.ndarray]] = {}
    pool: dict[int, np.ndarray] = {}
    for c in cls:
        idx = rng.permutation(np.flatnonzero(y_train == c))
        n_in = math.floor((1 - Fraction(repr(float(d)))) * len(idx))
        if n_in < p:
            raise SimflError(f"class {c} has too few training images for p={p} clients")
        chunks[c] = np.array_split(idx[:n_in], p)
        pool[c] = idx[n_in:]

    # Class-level demand, spread evenly (cyclic remainders) over the other classes' pools.
    need = {c: [outliers_for(len(ch), d) for ch in chunks[c]] for c in cls}
    taken = {c: 0 for c in cls}
    class_outliers: dict[int, np.ndarray] = {}
    for a, c in enumerate(cls):
        others = [cls[(a + j) % k] for j in range(1, k)]
        counts = _spread(sum(need[c]), k - 1, 0)
        parts = []
        for src, cnt in zip(others, counts, strict=True):
            if taken[src] + cnt > len(pool[src]):
                raise SimflError(
                    f"outlier pool of class {src} is exhausted (d={d}, p={p}, classes={list(cls)}); "
                    "lower d or p"
                )
            parts.append(pool[src][taken[src] : taken[src] + cnt])
            taken[src] += cnt
        class_outliers[c] = rng.permutation(np.concatenate(parts)) if parts else np.empty(0, np.int64)

    clients: list[ClientShard] = []
    for a, c in enumerate(cls):
        start = 0
        for j, chunk in enumerate(chunks[c]):
            out = class_outliers[c][start : start + need[c][j]]
            start += need[c][j]
            clients.append(_shard(fm, a * p + j, c, rng.permutation(np.concatenate([chunk, out]))))

    y_test = fm.y_test.astype(np.int64)
    by_class = {c: np.flatnonzero(y_test == c) for c in cls}
    tests: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for a, c in enumerate(cls):
        inl = by_class[c]
        n_out = outliers_for(len(inl), d)
        others = [cls[(a + j) % k] for j in range(1, k)]
        counts = _spread(n_out, k - 1, 0)
        parts = [inl]
        for src, cnt in zip(others, counts, strict=True):
            if cnt > len(by_class[src]):
                raise SimflError(f"too few test images of class {src} for class {c}'s test outliers")
            parts.append(rng.choice(by_class[src], size=cnt, replace=False))
        index = rng.permutation(np.concatenate(parts))
        tests[c] = (fm.x_test[index], y_test[index] != c)
    return Partition(classes=cls, p=p, d=float(d), seed=int(seed), clients=tuple(clients), tests=tests)
