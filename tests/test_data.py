"""Fashion-MNIST loading and the authors' partition, checked against hand-computed sizes."""

from __future__ import annotations

import gzip
import hashlib
import math
from collections import Counter

import numpy as np
import pytest

from simfl import data as data_mod
from simfl.data import DataNotFoundError, find_data_dir, load_fashion_mnist, make_partition
from simfl.errors import SimflError


@pytest.fixture(scope="module")
def fm():
    return load_fashion_mnist(find_data_dir())


def test_loader_shapes_and_the_known_class_balance(fm):
    assert fm.x_train.shape == (60000, 28, 28) and fm.x_train.dtype == np.uint8
    assert fm.x_test.shape == (10000, 28, 28)
    # Fashion-MNIST has exactly 6,000 training and 1,000 test images per class.
    assert np.bincount(fm.y_train) .tolist() == [6000] * 10
    assert np.bincount(fm.y_test).tolist() == [1000] * 10
    assert 0 < fm.x_train.mean() < 255


def test_idx_parser_on_a_hand_made_file(tmp_path):
    raw = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    raw += bytes(range(12))
    path = tmp_path / "t.gz"
    path.write_bytes(gzip.compress(raw))
    arr = data_mod._read_idx(path)
    assert arr.shape == (2, 2, 3)
    assert arr[1, 1, 2] == 11
    path.write_bytes(gzip.compress(raw[:-1]))
    with pytest.raises(SimflError):
        data_mod._read_idx(path)


def test_missing_default_data_gives_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.delenv("SIMFL_DATA", raising=False)
    monkeypatch.setattr(data_mod, "DEFAULT_DATA_DIR", tmp_path / "nowhere")
    with pytest.raises(DataNotFoundError) as err:
        find_data_dir(None)
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "SIMFL_DATA" in msg and "data_dir" in msg and str(tmp_path / "nowhere") in msg
    assert "\n" not in msg and isinstance(err.value, SimflError)


def _link_files(real, folder, names):
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).symlink_to(real / name)


def test_a_given_folder_without_the_files_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    real = find_data_dir()
    monkeypatch.setattr(data_mod, "DEFAULT_DATA_DIR", real)  # the files are there: never fall back to them
    partial = tmp_path / "partial"
    _link_files(real, partial, list(data_mod.FILES.values())[:3])
    monkeypatch.delenv("SIMFL_DATA", raising=False)
    with pytest.raises(DataNotFoundError) as err:
        find_data_dir(partial)
    msg = str(err.value)
    assert msg.startswith(f"experiment.data_dir = {partial}: ") and "t10k-labels-idx1-ubyte.gz" in msg
    assert "t10k-images" not in msg.split(";")[0]  # only the missing file is named as missing
    monkeypatch.setenv("SIMFL_DATA", str(tmp_path / "nothing"))
    with pytest.raises(DataNotFoundError) as err:
        find_data_dir(None)
    assert str(err.value).startswith(f"$SIMFL_DATA = {tmp_path / 'nothing'}: ")
    with pytest.raises(DataNotFoundError, match="^experiment.data_dir = "):
        find_data_dir(partial)  # the scenario's folder comes first, also when $SIMFL_DATA is set


def test_search_order_explicit_then_env_then_default(tmp_path, monkeypatch):
    real = find_data_dir()
    monkeypatch.setattr(data_mod, "DEFAULT_DATA_DIR", tmp_path / "nowhere")
    monkeypatch.setenv("SIMFL_DATA", str(real))
    assert find_data_dir(None) == real and find_data_dir("") == real
    mine = tmp_path / "mine"
    _link_files(real, mine, data_mod.FILES.values())
    assert find_data_dir(mine) == mine
    monkeypatch.delenv("SIMFL_DATA")
    monkeypatch.setattr(data_mod, "DEFAULT_DATA_DIR", mine)
    assert find_data_dir(None) == mine


def test_data_fingerprint_hashes_each_file(tmp_path):
    real = find_data_dir()
    fp = data_mod.data_fingerprint(real)
    assert sorted(fp) == sorted(data_mod.FILES.values())
    name = data_mod.FILES["y_test"]
    assert fp[name] == hashlib.sha256((real / name).read_bytes()).hexdigest()
    copy = tmp_path / "copy"
    _link_files(real, copy, [n for n in data_mod.FILES.values() if n != name])
    (copy / name).write_bytes((real / name).read_bytes()[:-1] + b"x")
    other = data_mod.data_fingerprint(copy)
    assert {k for k in fp if fp[k] != other[k]} == {name}
    with pytest.raises(DataNotFoundError, match="cannot read"):
        data_mod.data_fingerprint(tmp_path)


@pytest.mark.parametrize("val", [0.0, 0.1, 0.2, 0.25, 0.3, 1 / 3, 0.5, 0.6, 0.75, 0.9, 0.95, 0.99])
def test_min_shard_agrees_with_the_training_split(val):
    from simfl.learning_worker import split_indices

    need = data_mod.min_shard(val)
    assert len(split_indices(need, val)[0]) >= 1
    assert need == 1 or len(split_indices(need - 1, val)[0]) == 0


@pytest.mark.parametrize(("classes", "p", "d"), [((0, 1), 9, 0.1), ((1, 2, 3), 700, 0.2),
                                                 ((2, 5, 8), 5400, 0.1), ((3, 4), 7, 0.45)])
def test_smallest_shard(fm, classes, p, d):
    """Exact for the balanced split; for the authors' draw at least its smallest shard."""
    bal = make_partition(fm, classes, p, d, seed=1)
    assert min(len(s.x) for s in bal.clients) == data_mod.smallest_shard(len(classes), p, d, "balanced")
    aut = make_partition(fm, classes, p, d, seed=1, split="authors") if p < 5000 else None
    if aut is not None:
        assert min(len(s.x) for s in aut.clients) <= data_mod.smallest_shard(len(classes), p, d, "authors")


def test_partition_with_too_small_shards_names_clients_per_class(fm):
    # 2 classes, d = 0.1, seed 3: the authors' draw takes round(0.9 x 12,000) = 10,800 images, of which 5,396 are
    # class 0 (counted with numpy from the labels). 2,699 clients of class 0 get 5,396 = 2,697 x 2 + 2 x 1 inliers
    # and floor(0.1 x 1 / 0.9) = 0 outliers: the smallest shard holds 1 sample.
    part = make_partition(fm, (0, 1), 2699, 0.1, seed=3, split="authors")
    assert min(len(s.x) for s in part.clients) == 1
    with pytest.raises(SimflError, match=r"^experiment.clients_per_class = 2699: .* gets 1 samples and needs at "
                                         r"least 2 to keep one for training"):
        make_partition(fm, (0, 1), 2699, 0.1, seed=3, split="authors", min_samples=2)
    # 5,398 clients for 5,396 images: two of them get none
    with pytest.raises(SimflError, match=r"^experiment.clients_per_class = 5398: .* gets 0 samples"):
        make_partition(fm, (0, 1), 5398, 0.1, seed=3, split="authors")


# (classes, p, d, inliers per client (sorted), outliers per client for those sizes, test outliers)
# by hand: inlier source = floor((1-d) * 6000) per class, split in p chunks; outliers floor(d*n/(1-d)).
CASES = [
    (tuple(range(10)), 9, 0.1, {600: 66}, 111),  # 5400 / 9 = 600; 0.1*600/0.9 = 66.7; 0.1*1000/0.9 = 111.1
    ((0, 3, 5, 7, 9), 6, 0.2, {800: 200}, 250),  # 4800 / 6 = 800; 0.2*800/0.8 = 200; 0.2*1000/0.8 = 250
    ((1, 8), 3, 0.45, {1100: 900}, 818),  # 3300 / 3 = 1100; 0.45*1100/0.55 = 900; 450/0.55 = 818.2
    ((0, 1, 2), 7, 0.05, {814: 42, 815: 42}, 52),  # 5700 = 5*814 + 2*815; 0.05*815/0.95 = 42.9; 52.6
]


@pytest.mark.parametrize(("classes", "p", "d", "sizes", "test_out"), CASES)
def test_partition_invariants(fm, classes, p, d, sizes, test_out):
    part = make_partition(fm, classes, p, d, seed=3)
    assert part.classes == classes and len(part.clients) == p * len(classes)
    all_idx = np.concatenate([c.index for c in part.clients])
    assert len(np.unique(all_idx)) == len(all_idx), "shards overlap"
    for i, cl in enumerate(part.clients):
        c = classes[i // p]
        assert cl.client == i and cl.inlier_class == c
        assert np.array_equal(cl.x, fm.x_train[cl.index])
        assert np.array_equal(cl.labels, fm.y_train[cl.index])
        assert np.array_equal(cl.is_outlier, cl.labels != c)
        n_in = int((~cl.is_outlier).sum())
        assert n_in in sizes and int(cl.is_outlier.sum()) == sizes[n_in]
        assert set(cl.labels[cl.is_outlier].tolist()) <= set(classes) - {c}
    for k, c in enumerate(classes):
        group = part.clients[k * p : (k + 1) * p]
        n_in = [int((~g.is_outlier).sum()) for g in group]
        assert sum(n_in) == int((1 - d) * 6000 + 1e-9) and max(n_in) - min(n_in) <= 1
        # outliers of one inlier class are mixed evenly over the other classes
        src = Counter(np.concatenate([g.labels[g.is_outlier] for g in group]).tolist())
        assert set(src) == set(classes) - {c}
        assert max(src.values()) - min(src.values()) <= 1
        x_test, out = part.tests[c]
        assert len(x_test) == 1000 + test_out and int(out.sum()) == test_out
        assert x_test.dtype == np.uint8 and x_test.shape[1:] == (28, 28)


def test_partition_is_seeded(fm):
    a = make_partition(fm, (2, 4, 6), 2, 0.1, seed=1)
    b = make_partition(fm, (2, 4, 6), 2, 0.1, seed=1)
    c = make_partition(fm, (2, 4, 6), 2, 0.1, seed=2)
    assert all(np.array_equal(x.index, y.index) for x, y in zip(a.clients, b.clients, strict=True))
    assert all(np.array_equal(a.tests[k][0], b.tests[k][0]) for k in a.tests)
    assert not np.array_equal(a.clients[0].index, c.clients[0].index)


@pytest.mark.parametrize(("classes", "p", "d"), [((1,), 3, 0.1), ((1, 1), 3, 0.1), ((1, 2), 0, 0.1),
                                                 ((1, 2), 3, 0.0), ((1, 2), 3, 0.5), ((1, 12), 3, 0.1)])
def test_partition_rejects_bad_arguments(fm, classes, p, d):
    with pytest.raises(SimflError):
        make_partition(fm, classes, p, d, seed=0)


def test_authors_split_is_their_draw_of_the_paper_setting(fm):
    """split="authors" with their seed 42: the shards and test sets of the paper's runs."""
    part = make_partition(fm, range(10), 9, 0.1, seed=42, split="authors")
    assert len(part.clients) == 90
    rows = np.concatenate([c.index for c in part.clients])
    assert len(np.unique(rows)) == len(rows), "shards overlap"
    n_in = np.array([int((~c.is_outlier).sum()) for c in part.clients])
    assert n_in.sum() == 54000  # a random 90% of all 60,000 images is the inlier source
    for k in range(10):
        chunk = n_in[9 * k : 9 * (k + 1)]
        assert max(chunk) - min(chunk) <= 1 and abs(chunk.sum() - 5400) < 200  # about 90% of each class
    for i, c in enumerate(part.clients):
        assert c.inlier_class == i // 9 and np.array_equal(c.labels, fm.y_train[c.index])
        assert int(c.is_outlier.sum()) == math.floor(0.1 * n_in[i] / 0.9)  # the 10% pool suffices here
        assert c.inlier_class not in set(c.labels[c.is_outlier].tolist())
    test_in = {k: int((~out).sum()) for k, (_, out) in part.tests.items()}
    test_out = {k: int(out.sum()) for k, (_, out) in part.tests.items()}
    assert sum(test_in.values()) == 9000
    for k in range(9):
        assert test_out[k] == math.floor(0.1 * test_in[k] / 0.9)
    # The authors' notebook (step_2.ipynb) printed "request, remaining 99 95" while building these test sets:
    # class 8 had drawn 99 outliers, and class 9 found only 95 non-9 images left in the shared pool.
    assert test_out[8] == 99 and test_out[9] == 95 < math.floor(0.1 * test_in[9] / 0.9)


def test_authors_split_any_setting_and_seeded(fm):
    classes, p, d = (0, 3, 5), 4, 0.2
    a = make_partition(fm, classes, p, d, seed=7, split="authors")
    b = make_partition(fm, classes, p, d, seed=7, split="authors")
    c = make_partition(fm, classes, p, d, seed=8, split="authors")
    assert all(np.array_equal(x.index, y.index) for x, y in zip(a.clients, b.clients, strict=True))
    assert not np.array_equal(a.clients[0].index, c.clients[0].index)
    rows = np.concatenate([s.index for s in a.clients])
    assert len(np.unique(rows)) == len(rows) and set(fm.y_train[rows].tolist()) == set(classes)
    n_in = [int((~s.is_outlier).sum()) for s in a.clients]
    assert sum(n_in) == round(0.8 * 18000)
    want = [math.floor(d * n / (1 - d)) for n in n_in]
    got = [int(s.is_outlier.sum()) for s in a.clients]
    assert got[:p] == want[:p]  # the first class draws from a full pool
    assert all(g <= w for g, w in zip(got, want, strict=True)) and sum(got) <= 18000 - sum(n_in)
    for k, cls in enumerate(classes):
        assert all(s.inlier_class == cls for s in a.clients[k * p : (k + 1) * p])
        _, out = a.tests[cls]
        assert 0 < int(out.sum()) and int((~out).sum()) > 0.7 * 1000


def test_capped_partition_cuts_each_shard_to_its_first_samples():
    fm = load_fashion_mnist(find_data_dir())
    full = make_partition(fm, [1, 7], 2, 0.1, seed=5)
    cut = full.capped(40)
    for a, b in zip(full.clients, cut.clients, strict=True):
        assert len(b.x) == 40
        assert np.array_equal(b.index, a.index[:40]) and np.array_equal(b.x, fm.x_train[b.index])
        assert np.array_equal(b.is_outlier, fm.y_train[b.index] != a.inlier_class)
    assert full.capped(None) is full and full.capped(10**6) is full
    assert cut.tests is full.tests
