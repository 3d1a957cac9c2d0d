"""The Ray executor: the same tiny sweep on a local Ray instance gives the local executor's table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import test_fedad

from simfl.config import load_scenario
from simfl.errors import SimflError
from simfl.sweep import parse_vary, run_sweep
from simfl.sweep_ray import run_ray

tiny = test_fedad.tiny  # the tiny real scenario, its learning cache under tmp_path (empty)


def test_missing_ray_says_how_to_install_it(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(SimflError, match=r"pip install 'simfl\[ray\]'"):
        list(run_ray([(load_scenario(tiny), tmp_path / "p")], None, 2, print))


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_ray_executor_gives_the_local_table(tiny_cached: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    tiny = tiny_cached  # the session's tiny plan in tmp_path/cache: every point replays it
    vary = parse_vary(["node_groups[0].uplink.bandwidth=1 Mbps,100 Mbps", "node_groups[0].uplink.latency=0.1 ms,5 ms"])
    base: list[str] = []
    # relative sweep directory and cache path: the tasks still find both (they are given absolute paths)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SIMFL_CACHE", "cache")
    b = run_sweep(tiny, vary, Path("b"), base_overrides=base, executor="ray", progress=True)
    import ray

    assert not ray.is_initialized()  # the instance it started is shut down
    out = capsys.readouterr().out
    assert "ray: local instance" in out and out.count("done (ray)") == 3
    assert b["learning_from_cache"].to_list() == [True] * 4  # the driver's point and the Ray tasks replay
    a = run_sweep(tiny, vary, tmp_path / "a", base_overrides=base, progress=False)
    assert a.height == 4
    assert a.drop("wall_time_s", "learning_from_cache").equals(b.drop("wall_time_s", "learning_from_cache"))
    assert sorted(p.name for p in (tmp_path / "b" / "points").iterdir()) == \
        sorted(p.name for p in (tmp_path / "a" / "points").iterdir())
    # resumed: every point is read back, no Ray started
    capsys.readouterr()
    c = run_sweep(tiny, vary, Path("b"), base_overrides=base, executor="ray", progress=True)
    assert "ray:" not in capsys.readouterr().out
    assert c.drop("wall_time_s").equals(b.drop("wall_time_s"))

    # a point's own error comes back as that error, not wrapped in Ray's (the plan is cached: no training here)
    taken = tmp_path / "d" / "points" / "p001-1Mbps-5ms-seed3"
    taken.mkdir(parents=True)
    (taken / "summary.json").write_text("{}")  # some other finished run: the task refuses to overwrite it
    with pytest.raises(SimflError, match="holds a different finished run"):
        run_sweep(tiny, vary, Path("d"), base_overrides=base, executor="ray", progress=False)
    assert not ray.is_initialized()


def test_missing_ray_is_reported_before_any_training(tiny: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(SimflError, match=r"pip install 'simfl\[ray\]'"):
        run_sweep(tiny, parse_vary(["experiment.rounds=1,2"]), tmp_path / "s", executor="ray", progress=False)
    assert not (tmp_path / "s").exists()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_dead_cluster_address_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
        allpairs = Path(__file__).resolve().parent.parent / "topologies" / "allpairs-90.toml"
        with pytest.raises(SimflError, match=rf"^--address {address}: no Ray cluster answers there \("):
            run_sweep(allpairs, parse_vary(["seed=1,2"]), tmp_path / "s", executor="ray", address=address,
                      progress=False)
    import ray

    assert not ray.is_initialized()
