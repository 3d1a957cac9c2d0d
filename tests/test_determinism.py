"""Same scenario and seed, two processes with different string hashing (PYTHONHASHSEED): the same traces, byte for
byte (messages, links; compute but for its measured wall_s), for a network-only scenario and the tiny fedad one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
# 90 clients in six WiFi cells on a wired backbone, with the quick network-only workload
NETWORK_ONLY = [str(ROOT / "topologies" / "wifi-cells.toml"), "--set", 'workload="synthetic"',
                "--set", 'synthetic.pattern=["gather", "broadcast"]']


def _runs(argvs: dict[str, list[str]], out: Path, hash_seed: int) -> subprocess.Popen:
    """One process that runs each scenario (CLI arguments) into out/<name>."""
    code = ("import json, sys\nfrom simfl.cli import main\n"
            "for name, argv in json.loads(sys.argv[1]).items():\n"
            "    assert main(['run', *argv, '--out', sys.argv[2] + '/' + name, '--quiet']) == 0\n")
    env = dict(os.environ, PYTHONHASHSEED=str(hash_seed),
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(argvs), str(out)], env=env, cwd=out.parent)


def test_two_processes_with_different_hash_seeds_write_the_same_traces(tiny_cached: Path, tmp_path: Path) -> None:
    argvs = {"network": NETWORK_ONLY, "tiny": [str(tiny_cached)]}
    procs = [_runs(argvs, tmp_path / f"hash{seed}", seed) for seed in (1, 2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    for name in argvs:
        a, b = tmp_path / "hash1" / name, tmp_path / "hash2" / name
        for f in ("messages.parquet", "links.parquet"):
            assert (a / f).read_bytes() == (b / f).read_bytes(), (name, f)
        ca, cb = (pl.read_parquet(d / "compute.parquet").drop("wall_s") for d in (a, b))
        assert ca.equals(cb), name
    # what was compared is the whole run: 90 gathered and 90 broadcast messages; every phase of the method
    assert pl.read_parquet(tmp_path / "hash1" / "network" / "messages.parquet")["round"].value_counts().sort(
        "round").rows() == [(0, 90), (1, 90)]
    msgs = pl.read_parquet(tmp_path / "hash1" / "tiny" / "messages.parquet")
    compute = pl.read_parquet(tmp_path / "hash1" / "tiny" / "compute.parquet")
    assert set(msgs["phase"]) >= {"phase1", "ideal", "centralised"} and "phase1" in set(compute["phase"])
