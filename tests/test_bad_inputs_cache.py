"""A catalogue of bad learning-cache inputs: each is reported in one line and the run goes on.

A bad cache entry is never used: its value is computed again (and saved over it when the folder allows); a cache
that cannot be written is skipped. Learning runs on the fake engine (`simfl.learner.FakeEngine`), so no case
trains; the cases marked CLI run `simfl run` end to end and check its exit status, stderr and summary.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY
from test_cache import Bomb, fed_graph, split
from test_learner import EXP, partition

import simfl.cache as cache
import simfl.learner as learner_mod
from simfl.cli import main
from simfl.learner import FakeEngine, Learner, Ref


def make(folder: Path, warned: list[str], fake: FakeEngine | None = None) -> tuple[Learner, list[Ref]]:
    """A learner on the store in `folder` (warnings into `warned`) with the test graph registered."""
    engine = fake or FakeEngine()
    lr = Learner(EXP, partition(), cache.NodeStore(folder, warn=warned.append), engine=lambda: engine,
                 engine_kind="fake")
    return lr, fed_graph(lr)


@pytest.fixture()
def filled(tmp_path: Path) -> tuple[Path, Ref, bytes]:
    """A cache folder holding the test graph; (folder, the first cross-evaluation row's ref, its entry's bytes)."""
    folder = tmp_path / "cache"
    lr, refs = make(folder, [])
    lr.flush()
    cross = refs[8]
    return folder, cross, lr.store.path(cross.key).read_bytes()


def same_entry(a: bytes, b: bytes) -> bool:
    """Two entries of one value: equal but for the measured wall time in their meta."""
    (ha, pa), (hb, pb) = split(a), split(b)
    for h in (ha, hb):
        h["meta"].pop("wall_s", None)
    return (ha, pa) == (hb, pb)


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _reframed(good: bytes, payload: Any = None, **header: Any) -> bytes:
    """`good` with header fields replaced and, if given, another payload object (size and sha256 made right)."""
    h, body = split(good)
    if payload is not None:
        body = _torch_bytes({"magic": cache.NODE_MAGIC, "format": cache.NODE_FORMAT, "key": h["key"],
                             "payload": payload})
        h.update(bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
    h.update(header)
    return json.dumps(h).encode() + b"\n" + body


def _flip(data: bytes) -> bytes:
    b = bytearray(data)
    b[-len(b) // 4] ^= 0x40
    return bytes(b)


def _other_key(good: bytes) -> bytes:
    h, _ = split(good)
    node = h["node"].replace('"op":"cross"', '"op":"crosz"')
    return cache.node_bytes(hashlib.sha256(node.encode()).hexdigest()[:32], node, h["meta"], {"row": [0.5]})


# name -> (what to write at the entry's path, given the good entry and a folder for markers; the reason)
BAD_FILES: dict[str, tuple[Callable[[bytes, Path], bytes], str]] = {
    "empty file": (lambda _g, _t: b"", "it is empty"),
    "truncated file": (lambda g, _t: g[: len(g) * 2 // 3], "truncated or padded"),
    "padded file": (lambda g, _t: g + b"\0" * 10, "truncated or padded"),
    "header line only": (lambda g, _t: g.split(b"\n")[0] + b"\n", "truncated or padded"),
    "text file": (lambda _g, _t: b"hello, I am not a cache entry", "no simfl header"),
    "foreign torch file": (lambda _g, _t: _torch_bytes({"weight": torch.zeros(3)}), "no simfl header"),
    "json header of another program": (lambda _g, _t: b'{"magic": "npz", "format": 1}\nx', "not a simfl"),
    "pickle bomb (old-style torch.save)": (lambda _g, t: _torch_bytes(Bomb(str(t / "pwned"))), "no simfl header"),
    "pickle bomb in a well-formed frame": (lambda g, t: _reframed(g, Bomb(str(t / "pwned"))), "not plain data"),
    "another key's valid entry": (lambda g, _t: _other_key(g), "not of its name's key"),
    "another file format version": (lambda g, _t: _reframed(g, format=cache.NODE_FORMAT + 1), "file format 2"),
    "computation edited in the header": (lambda g, _t: _reframed(g, node=split(g)[0]["node"] + " "),
                                         "does not hash to its key"),
    "no meta in the header": (lambda g, _t: _reframed(g, meta=None), "holds no meta"),
    "wrong payload hash": (lambda g, _t: _reframed(g, sha256=hashlib.sha256(b"").hexdigest()), "sha256"),
    "flipped payload byte": (lambda g, _t: _flip(g), "sha256"),
    "no result in a valid frame": (lambda g, _t: _reframed(g, [1, 2, 3]), "holds no learning result"),
    "array entry without a tensor": (lambda g, _t: _reframed(g, {"row": {cache._TAG_ARRAY: [1.0]}}),
                                     "an array entry holds no tensor"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_cache_entry_is_reported_and_computed_again(case: str, tmp_path: Path, filled: Any) -> None:
    folder, cross, good = filled
    content, reason = BAD_FILES[case]
    path = cache.NodeStore(folder).path(cross.key)
    path.write_bytes(content(good, tmp_path))
    warned: list[str] = []
    fake = FakeEngine()
    lr, _ = make(folder, warned, fake)
    row = lr.value(cross, "row")
    assert row.tolist() == [0.9] * 4 and fake.calls == [("cross", [0])]  # only that row was computed again
    assert len(warned) == 1 and reason in warned[0] and str(path) in warned[0] and "computing it again" in warned[0]
    assert reason in lr.store.notes[0]
    assert not (tmp_path / "pwned").exists()  # nothing in the file ran
    assert same_entry(path.read_bytes(), good)  # replaced by the value computed again
    again, _ = make(folder, warned, FakeEngine())
    assert again.value(cross, "row").tolist() == row.tolist() and again.flush().computed == 0 and len(warned) == 1


def test_a_folder_where_the_entry_should_be_is_left_alone(filled: Any) -> None:
    folder, cross, _ = filled
    path = cache.NodeStore(folder).path(cross.key)
    path.unlink()
    (path / "inside").mkdir(parents=True)
    warned: list[str] = []
    lr, _ = make(folder, warned)
    assert lr.value(cross, "row").tolist() == [0.9] * 4
    assert len(warned) == 1 and "it is a folder, not a cache entry" in warned[0]
    assert (lr.store.saved, lr.store.unsaved) == (0, 1) and (path / "inside").is_dir()


def test_an_unreadable_entry_is_reported_and_replaced(filled: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, cross, good = filled

    def denied(file: Any, *a: Any, **k: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", str(file))

    monkeypatch.setattr(cache, "open", denied, raising=False)  # as chmod 000 does for anyone but root
    warned: list[str] = []
    lr, refs = make(folder, warned)
    lr.flush()
    assert lr.stats.computed == 16 and lr.store.saved == 16  # nothing readable: everything computed and saved
    assert len(warned) == 16 and all("cannot read it (Permission denied)" in w for w in warned)
    monkeypatch.undo()
    assert same_entry(cache.NodeStore(folder).path(cross.key).read_bytes(), good)


def test_a_stale_temporary_file_is_ignored(filled: Any) -> None:
    """What a run killed while saving leaves: never read, never in the way."""
    folder, cross, good = filled
    path = cache.NodeStore(folder).path(cross.key)
    path.unlink()
    (path.parent / f".{path.name}.4242-0badcafe.tmp").write_bytes(good[:100])
    warned: list[str] = []
    lr, _ = make(folder, warned)
    lr.flush()
    assert lr.stats.computed == 1 and warned == [] and same_entry(path.read_bytes(), good)


def test_a_missing_parent_folder_is_created(tmp_path: Path) -> None:
    warned: list[str] = []
    lr, _ = make(tmp_path / "a" / "b" / "cache", warned)
    lr.flush()
    assert lr.store.saved == 16 and warned == [] and lr.store.notes == []


def test_a_cache_folder_under_a_file_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("mine")
    warned: list[str] = []
    lr, _ = make(tmp_path / "afile" / "cache", warned)
    lr.flush()
    assert (lr.store.saved, lr.store.unsaved) == (0, 16) and len(warned) == 1
    assert f"cannot save learning results in {tmp_path / 'afile' / 'cache'} (Not a directory)" in warned[0]
    assert (tmp_path / "afile").read_text() == "mine"


def test_unwritable_folder_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same failure as a real read-only folder (the CLI test), for when the tests run as root."""
    real = os.open

    def denied(file: Any, flags: int, *a: Any) -> int:
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real(file, flags, *a)

    monkeypatch.setattr(cache.os, "open", denied)
    (tmp_path / "c").mkdir()
    warned: list[str] = []
    lr, _ = make(tmp_path / "c", warned)
    lr.flush()
    assert lr.store.saved == 0 and len(warned) == 1
    assert f"cannot save learning results in {tmp_path / 'c'} (Permission denied)" in warned[0]
    assert [p for p in (tmp_path / "c").rglob("*") if p.is_file()] == []


# ---------------------------------------------------------------------------------------------------- via the CLI
@pytest.fixture()
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[int, list[str], dict]]:
    """`simfl run TINY --device cpu --quiet [extra]` in tmp_path on the fake engine: (exit status, stderr lines,
    summary['cache'])."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(learner_mod, "Engine", lambda **_k: FakeEngine())
    (tmp_path / "tiny.toml").write_text(TINY)

    def go(*extra: str) -> tuple[int, list[str], dict]:
        out = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
        rc = main(["run", "tiny.toml", "--out", str(out), "--device", "cpu", "--quiet", *extra])
        err = capsys.readouterr().err.splitlines()
        return rc, err, json.loads((out / "summary.json").read_text())["cache"]

    return go


def test_cli_cache_folder_is_a_file(cli: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cachefile").write_text("mine")
    monkeypatch.setenv("SIMFL_CACHE", str(tmp_path / "cachefile"))
    rc, err, c = cli()
    assert rc == 0 and len(err) == 1 and err[0].startswith("simfl: warning: learning cache: cannot save")
    assert "it is a file, not a folder" in err[0] and str(tmp_path / "cachefile") in err[0]
    assert (c["from_cache"], c["saved"]) == (False, False) and "it is a file" in c["note"]
    assert (tmp_path / "cachefile").read_text() == "mine"


def test_cli_unwritable_folder(cli: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):
        folder.chmod(0o700)
        pytest.skip("this user may write to a 0o500 folder (root): see test_unwritable_folder_simulated")
    monkeypatch.setenv("SIMFL_CACHE", str(folder))
    try:
        rc, err, c = cli()
    finally:
        folder.chmod(0o700)
    assert rc == 0 and len(err) == 1 and "Permission denied" in err[0] and not c["saved"]
    assert list(folder.iterdir()) == []


def test_cli_full_disk(cli: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.os, "fsync", full)
    monkeypatch.setenv("SIMFL_CACHE", str(tmp_path / "c"))
    rc, err, c = cli()
    assert rc == 0 and len(err) == 1 and "the disk is full" in err[0]
    assert (c["from_cache"], c["saved"]) == (False, False) and "the disk is full" in c["note"]
    assert [p.suffix for p in (tmp_path / "c").rglob("*") if p.is_file()] == [".lock"] * c["computed"]


def test_cli_pickle_bomb_is_not_run_and_is_replaced(cli: Callable, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMFL_CACHE", str(tmp_path / "c"))
    rc, err, c = cli()
    assert (rc, err, c["from_cache"], c["saved"]) == (0, [], False, True)
    # a cross-evaluation row: every run reads its payload (the clients' verdicts)
    path = next(p for p in (tmp_path / "c").rglob("*.pt") if '"op":"cross"' in split(p.read_bytes())[0]["node"])
    good = path.read_bytes()
    path.write_bytes(_reframed(good, Bomb(str(tmp_path / "pwned"))))
    rc, err, c = cli()
    assert rc == 0 and len(err) == 1 and "not plain data" in err[0] and not (tmp_path / "pwned").exists()
    assert (c["path"], c["from_cache"], c["saved"], c["computed"]) == (str(tmp_path / "c"), False, True, 1)
    assert same_entry(path.read_bytes(), good)
    rc, err, c = cli()  # the next run reads everything back, silently
    assert (rc, err, c["from_cache"], c["computed"]) == (0, [], True, 0)


@pytest.mark.parametrize("how", ["SIMFL_CACHE=off", "--no-cache"])
def test_cli_cache_off(how: str, cli: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIMFL_CACHE", raising=False)
    if how == "SIMFL_CACHE=off":
        monkeypatch.setenv("SIMFL_CACHE", "off")
    rc, err, c = cli(*([how] if how.startswith("--") else []))
    assert (rc, err) == (0, [])
    assert {k: c[k] for k in ("path", "from_cache", "saved", "note")} == {
        "path": None, "from_cache": False, "saved": False, "note": "caching is off"}
    assert c["computed"] > 0 and not (tmp_path / ".cache").exists()  # the default folder was never made
