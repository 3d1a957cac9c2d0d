"""A catalogue of bad learning-cache inputs: each is reported in one line and the run goes on.

A bad cache file is never used: the plan is rebuilt (and saved over it when the folder allows); a cache that
cannot be written is skipped. Learning is replaced by a hand-built plan (`learning` fixture), so no case trains;
the cases marked CLI run `simfl run` end to end and check its exit status, stderr and summary.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from test_cache import Bomb, assert_same, with_header
from test_fedad import TINY
from test_protocol import block_ratios, synthetic_plan

import simfl.cache as cache
import simfl.plan as planning
from simfl.cache import cached_plan, plan_bytes, plan_key, read_plan
from simfl.cli import main
from simfl.config import scenario_from_dict
from simfl.plan import LearningPlan

EXP = scenario_from_dict(tomllib.loads(TINY)).experiment
SEED = 3  # TINY's
KEY = plan_key(EXP, SEED, "cpu")
OTHER_KEY = "f" * 24


def tiny_plan() -> LearningPlan:
    """A plan shaped for TINY (2 classes x 2 clients, 2 rounds): zero weights, made-up AUCs, nothing trained."""
    plan = synthetic_plan(2, 2, block_ratios(2, 2), 0.06, 2)
    plan.auc = {"local": [0.5, 0.625, 0.75, 0.875], "method": [0.75] * 4, "method_last_fit": [0.625] * 4}
    return plan


@pytest.fixture()
def learning(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """build_plan returns tiny_plan() (each call recorded), partition_of its partition."""
    built: list[int] = []

    def build(exp: Any, seed: int, say: Any, device: str | None = None) -> LearningPlan:
        built.append(seed)
        return tiny_plan()

    monkeypatch.setattr(planning, "build_plan", build)
    monkeypatch.setattr(planning, "partition_of", lambda exp, seed: tiny_plan().partition)
    return built


def stored() -> LearningPlan:
    """tiny_plan() as a cache file holds it (the partition is rebuilt, not stored)."""
    return dataclasses.replace(tiny_plan(), partition=None)


def run(folder: Path | None, warned: list[str]) -> cache.CacheResult:
    return cached_plan(EXP, SEED, lambda _m: None, folder, device="cpu", warn=warned.append)


def _payload_of(body: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(body, buf)
    return buf.getvalue()


def _valid() -> bytes:
    return plan_bytes(tiny_plan(), KEY)


def _header_with(**fields: Any) -> bytes:
    header, payload = _valid().split(b"\n", 1)
    return json.dumps({**json.loads(header), **fields}).encode() + b"\n" + payload


def _flip(data: bytes) -> bytes:
    b = bytearray(data)
    b[len(b) // 2] ^= 0x40
    return bytes(b)


def _body(plan: Any) -> bytes:
    return with_header(_payload_of({"magic": cache.MAGIC, "format": cache.FILE_FORMAT, "key": KEY, "plan": plan}),
                       key=KEY)


# name -> (what to write at the plan's path, the reason the warning names)
BAD_FILES: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "empty file": (lambda _t: b"", "it is empty"),
    "truncated file": (lambda _t: _valid()[: len(_valid()) // 2], "truncated or padded"),
    "padded file": (lambda _t: _valid() + b"\0" * 10, "truncated or padded"),
    "header line only": (lambda _t: _valid().split(b"\n")[0] + b"\n", "truncated or padded"),
    "text file": (lambda _t: b"hello, I am not a plan", "no simfl header"),
    "foreign torch file": (lambda _t: _payload_of({"weight": torch.zeros(3)}), "no simfl header"),
    "json header of another program": (lambda _t: b'{"magic": "npz", "format": 1}\n' + b"x", "not a simfl"),
    "pickle bomb (old-style torch.save)": (lambda t: _payload_of(Bomb(str(t / "pwned"))), "no simfl header"),
    "pickle bomb in a well-formed frame": (lambda t: _body(Bomb(str(t / "pwned"))), "not plain data"),
    "another key's valid plan": (lambda _t: plan_bytes(tiny_plan(), OTHER_KEY), "not of its name's key"),
    "another file format version": (lambda _t: _header_with(format=cache.FILE_FORMAT + 1), "file format 2"),
    "wrong payload hash": (lambda _t: _header_with(sha256=hashlib.sha256(b"").hexdigest()), "sha256"),
    "flipped payload byte": (lambda _t: _flip(_valid()), "sha256"),
    "unknown type in a valid frame": (lambda _t: _body({cache._TAG_TYPE: "Evil", "fields": {}}), "unknown type"),
    "plan of other fields": (lambda _t: _body({cache._TAG_TYPE: "LearningPlan", "fields": {"ari": 1.0}}), "fields"),
    "no plan in a valid frame": (lambda _t: _body([1, 2, 3]), "holds no learning plan"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_cache_file_is_reported_and_rebuilt(case: str, tmp_path: Path, learning: list[int]) -> None:
    content, reason = BAD_FILES[case]
    folder = tmp_path / "cache"
    folder.mkdir()
    path = folder / f"plan-{KEY}.pt"
    path.write_bytes(content(tmp_path))
    warned: list[str] = []
    res = run(folder, warned)
    assert (res.from_cache, res.saved, learning) == (False, True, [SEED])
    assert len(warned) == 1 and reason in warned[0] and str(path) in warned[0] and "rebuilding" in warned[0]
    assert reason in res.note
    assert not (tmp_path / "pwned").exists()  # nothing in the file ran
    assert_same(read_plan(path, KEY), stored())  # the bad file was replaced by the rebuilt plan
    again = run(folder, warned)
    assert again.from_cache and learning == [SEED] and len(warned) == 1


def test_a_folder_where_the_file_should_be_is_left_alone(tmp_path: Path, learning: list[int]) -> None:
    path = tmp_path / f"plan-{KEY}.pt"
    (path / "inside").mkdir(parents=True)
    warned: list[str] = []
    res = run(tmp_path, warned)
    assert (res.from_cache, res.saved, learning) == (False, False, [SEED])
    assert len(warned) == 1 and "it is a folder, not a plan file" in warned[0]
    assert "not saved" in res.note and (path / "inside").is_dir()


def test_an_unreadable_file_is_reported_and_replaced(tmp_path: Path, learning: list[int],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / f"plan-{KEY}.pt"
    path.write_bytes(_valid())

    def denied(file: Any, *a: Any, **k: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", str(file))

    monkeypatch.setattr(cache, "open", denied, raising=False)  # as chmod 000 does for anyone but root
    warned: list[str] = []
    res = run(tmp_path, warned)
    assert (res.from_cache, res.saved) == (False, True) and len(warned) == 1
    assert "cannot read it (Permission denied)" in warned[0]
    monkeypatch.undo()
    assert_same(read_plan(path, KEY), stored())


def test_a_stale_temporary_file_is_ignored(tmp_path: Path, learning: list[int]) -> None:
    """What a run killed while saving leaves: never read, never in the way."""
    stale = tmp_path / f".plan-{KEY}.pt.4242-0badcafe.tmp"
    stale.write_bytes(_valid()[:100])
    warned: list[str] = []
    assert run(tmp_path, warned).saved and warned == []
    assert run(tmp_path, warned).from_cache and learning == [SEED]


def test_a_missing_parent_folder_is_created(tmp_path: Path, learning: list[int]) -> None:
    folder = tmp_path / "a" / "b" / "cache"
    warned: list[str] = []
    res = run(folder, warned)
    assert res.saved and warned == [] and res.note == "" and res.path == folder / f"plan-{KEY}.pt"


def test_a_cache_folder_under_a_file_is_skipped(tmp_path: Path, learning: list[int]) -> None:
    (tmp_path / "afile").write_text("mine")
    warned: list[str] = []
    res = run(tmp_path / "afile" / "cache", warned)
    assert (res.from_cache, res.saved) == (False, False) and len(warned) == 1
    assert f"cannot save the learning plan in {tmp_path / 'afile' / 'cache'} (Not a directory)" in warned[0]
    assert (tmp_path / "afile").read_text() == "mine"


def test_unwritable_folder_simulated(tmp_path: Path, learning: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """The same failure as a real read-only folder (next test), for when the tests run as root."""
    real = os.open

    def denied(file: Any, flags: int, *a: Any) -> int:
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real(file, flags, *a)

    monkeypatch.setattr(cache.os, "open", denied)
    warned: list[str] = []
    res = run(tmp_path, warned)
    assert (res.from_cache, res.saved) == (False, False) and len(warned) == 1
    assert f"cannot save the learning plan in {tmp_path} (Permission denied)" in warned[0]
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------- via the CLI
@pytest.fixture()
def cli(tmp_path: Path, learning: list[int], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[int, list[str], dict]]:
    """`simfl run TINY --device cpu --quiet [extra]` in tmp_path: (exit status, stderr lines, summary['cache'])."""
    monkeypatch.chdir(tmp_path)
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
    assert [p.name for p in (tmp_path / "c").iterdir()] == [f"plan-{KEY}.lock"]  # no plan, no temporary file


def test_cli_pickle_bomb_is_not_run_and_is_replaced(cli: Callable, tmp_path: Path, learning: list[int],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMFL_CACHE", str(tmp_path / "c"))
    path = tmp_path / "c" / f"plan-{KEY}.pt"
    path.parent.mkdir()
    path.write_bytes(_body(Bomb(str(tmp_path / "pwned"))))
    rc, err, c = cli()
    assert rc == 0 and len(err) == 1 and "not plain data" in err[0] and not (tmp_path / "pwned").exists()
    assert (c["path"], c["from_cache"], c["saved"]) == (str(path), False, True)
    rc, err, c = cli()  # the next run reads the rebuilt plan, silently
    assert (rc, err, c["from_cache"], learning) == (0, [], True, [SEED])


@pytest.mark.parametrize("how", ["SIMFL_CACHE=off", "--no-cache"])
def test_cli_cache_off(how: str, cli: Callable, tmp_path: Path, learning: list[int],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIMFL_CACHE", raising=False)
    if how == "SIMFL_CACHE=off":
        monkeypatch.setenv("SIMFL_CACHE", "off")
    rc, err, c = cli(*([how] if how.startswith("--") else []))
    assert (rc, err) == (0, [])
    assert c == {"path": None, "from_cache": False, "saved": False, "note": "caching is off"}
    assert learning == [SEED] and not (tmp_path / ".cache").exists()  # the default folder was never made
