"""Parameter sweeps: a grid of scenario overrides x seeds, one table row per point, resumable.

Learning results do not depend on the network, so a sweep first builds each distinct learning plan once (through
the content-addressed cache of `simfl.plan`), then replays every point on its network. A point whose directory
already holds a finished run of the same resolved scenario is read back, not recomputed.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import multiprocessing
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl

from simfl.config import DEFAULT_SCENARIO, Scenario, load_scenario
from simfl.errors import SimflError
from simfl.fedad import progress_printer
from simfl.plan import APPROACHES, learning_identity
from simfl.runner import INCOMPLETE, run_scenario
from simfl.units import parse_rate, parse_size, parse_time

PHASES = ("phase1", "phase2", "ideal", "centralised", "local")


def parse_vary(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    """`KEY=V1,V2,...` -> (KEY, [V1, V2, ...]); errors name the bad item."""
    out: list[tuple[str, list[str]]] = []
    for item in items:
        if "=" not in item:
            raise SimflError(f"--vary {item}: expected KEY=V1,V2,..., e.g. --vary experiment.rounds=2,5")
        key, raw = item.split("=", 1)
        values = [v.strip() for v in raw.split(",") if v.strip()]
        if not key.strip() or not values:
            raise SimflError(f"--vary {item}: needs a key and at least one value")
        if key.strip() in [k for k, _ in out]:
            raise SimflError(f"--vary {key.strip()}: given twice")
        out.append((key.strip(), values))
    return out


def numeric(value: str) -> float | None:
    """A number for plotting: plain numbers, rates (bit/s), times (s) or sizes (bytes); None if none parse."""
    for parse in (float, parse_rate, parse_time, parse_size):
        try:
            return float(parse(value.strip('"')))
        except (ValueError, TypeError, SimflError):
            continue
    return None


def _toml_literal(v: str) -> str:
    """Values with units ('100 Mbps') are strings in TOML; numbers, booleans and arrays pass as written."""
    if re.fullmatch(r"-?\d+(\.\d*)?([eE][-+]?\d+)?|true|false|\[.*\]|\".*\"", v):
        return v
    return json.dumps(v)


def _slug(i: int, combo: Sequence[str], seed: int) -> str:
    parts = [f"p{i:03d}", *(re.sub(r"[^A-Za-z0-9.]+", "", v) for v in combo), f"seed{seed}"]
    return "-".join(parts)[:80]


def plan_points(path: Path, vary: list[tuple[str, list[str]]], seeds: int,
                base_overrides: Sequence[str] = ()) -> list[tuple[dict[str, str], Scenario]]:
    """Every grid point's values and validated scenario (all validated before anything runs)."""
    base = load_scenario(path, list(base_overrides))
    points = []
    for combo in itertools.product(*[vals for _, vals in vary]):
        for s in range(seeds):
            overrides = list(base_overrides) + [f"{k}={_toml_literal(v)}" for (k, _), v in zip(vary, combo)]
            sc = load_scenario(path, overrides, seed=base.seed + s)
            points.append(({k: v for (k, _), v in zip(vary, combo)}, sc))
    if not points:
        raise SimflError("the sweep grid is empty")
    return points


def row_of(values: dict[str, str], summary: dict[str, Any]) -> dict[str, Any]:
    """One table row: the varied values (as written and as numbers), bytes, durations and AUC of a point."""
    row: dict[str, Any] = {}
    for k, v in values.items():
        row[k] = v
        row[f"{k}__value"] = numeric(v)
    row["seed"] = summary.get("seed")
    pb, wb, du = summary.get("payload_bytes", {}), summary.get("wire_bytes", {}), summary.get("duration_s", {})
    for p in PHASES:
        row[f"payload_bytes_{p}"] = pb.get(p)
        row[f"wire_bytes_{p}"] = wb.get(p)
        row[f"duration_s_{p}"] = du.get(p)
    row["duration_s_method"] = (du["phase1"] + du["phase2"]) if "phase1" in du and "phase2" in du else None
    row["centralised_upload_s"] = summary.get("centralised_upload_s")
    for a in APPROACHES:
        row[f"auc_{a}"] = summary.get("auc_mean", {}).get(a)
    row["communities"] = summary.get("k")
    row["ari"] = summary.get("ari")
    row["learning_from_cache"] = summary.get("learning_from_cache")
    row["wall_time_s"] = summary.get("wall_time_s")
    return row


RAY_MISSING = "--executor ray needs Ray: pip install 'simfl[ray]'"


def _finished(out: Path, sc: Scenario) -> dict[str, Any] | None:
    """The summary of a finished run of `sc` in `out`, marked resumed; None when there is none."""
    try:
        if (out / INCOMPLETE).exists() or (out / "scenario.toml").read_text() != sc.to_toml():
            return None
        done = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    done["resumed"] = True
    return done


def run_point(sc: Scenario, out: Path, progress: bool = False) -> dict[str, Any]:
    """Run one point (or read it back when it already finished with the same scenario)."""
    done = _finished(out, sc)
    if done is not None:
        return done
    if out.exists() and any(out.iterdir()) and not (out / INCOMPLETE).exists():
        raise SimflError(f"{out}: holds a different finished run; remove it or sweep into another directory")
    return run_scenario(sc, out, progress=progress)


def _run_ray(jobs: list[tuple[Scenario, Path]], address: str | None, cpus: int,
             say: Callable[[str], None]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Run points as Ray tasks; yields (index in jobs, summary) as each finishes.

    Without an address a private local Ray instance is started (and shut down afterwards); with one, the sweep
    connects to that cluster, whose nodes need simfl installed and the sweep and cache directories at the same
    paths (a shared file system). Tasks replay learning plans from the cache the driver filled: its absolute path
    (and the data directory, if $SIMFL_DATA names one) reaches them through the task's environment."""
    import logging
    import os
    import shutil
    import socket
    import tempfile

    from simfl.cache import default_cache_dir

    todo = []
    for k, (sc, out) in enumerate(jobs):
        done = _finished(out, sc)
        if done is None:
            todo.append(k)
        else:  # read back here: a resumed sweep starts no Ray for points that already finished
            yield k, done
    if not todo:
        return
    try:
        import ray
        from ray.exceptions import RayTaskError
    except ImportError as e:
        raise SimflError(RAY_MISSING) from e
    cache = default_cache_dir()
    env = {"SIMFL_CACHE": str(cache.resolve()) if cache is not None else "off"}
    if os.environ.get("SIMFL_DATA"):
        env["SIMFL_DATA"] = str(Path(os.environ["SIMFL_DATA"]).expanduser().resolve())
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    ours, tmp = not ray.is_initialized(), None
    try:
        if ours and address:
            say(f"ray: connecting to {address}")
            hostport = re.fullmatch(r"(?:ray://)?([^:/]+):(\d+)/?", address)
            if hostport:  # Ray itself retries a dead address for minutes
                try:
                    socket.create_connection((hostport[1], int(hostport[2])), timeout=10).close()
                except OSError as e:
                    raise SimflError(f"--address {address}: no Ray cluster answers there ({e})") from None
            logging.getLogger("ray").setLevel(logging.ERROR)
            try:
                # As address="auto" does: use the token of a cluster with token authentication (Ray's default
                # for `ray start` since 2.59) when one is at hand; an explicit address alone skips it (Ray 2.60).
                from ray._private.authentication.authentication_token_setup import (
                    maybe_enable_token_auth_if_token_available,
                )

                maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
            except Exception:  # a private helper: without it, RAY_AUTH_MODE=token does the same
                pass
            try:
                ray.init(address=address, **quiet)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise SimflError(f"--address {address}: cannot connect to a Ray cluster there ({e}); with token "
                                 "authentication, set RAY_AUTH_MODE=token and the cluster's token "
                                 "(RAY_AUTH_TOKEN or ~/.ray/auth_token)") from None
        elif ours:
            tmp = tempfile.mkdtemp(prefix="simfl-ray-", dir="/tmp")  # short: Ray's socket paths live under it
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, object_store_memory=128 * 2**20,
                     _temp_dir=tmp, **quiet)
            say(f"ray: local instance with {cpus} CPUs")
        task = ray.remote(run_point).options(runtime_env={"env_vars": env})
        pending = {task.remote(jobs[k][0], jobs[k][1].resolve()): k for k in todo}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                k = pending.pop(ref)
                try:
                    r = ray.get(ref)
                except RayTaskError as e:  # a point's own error (bad scenario, occupied directory) reads as one
                    if isinstance(e.cause, SimflError):
                        raise e.cause from None
                    raise
                yield k, r
    finally:
        if ours:
            ray.shutdown()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def run_sweep(path: Path, vary: list[tuple[str, list[str]]], out_dir: Path, *, seeds: int = 1,
              base_overrides: Sequence[str] = (), executor: str = "local", jobs: int = 1,
              address: str | None = None, progress: bool = True) -> pl.DataFrame:
    """Run the grid into out_dir (points/, sweep.parquet, sweep.csv, plots) and return the table."""
    if seeds < 1:
        raise SimflError(f"--seeds {seeds}: must be at least 1")
    if executor not in ("local", "ray"):
        raise SimflError(f"--executor {executor}: choose local or ray")
    if executor == "ray" and importlib.util.find_spec("ray") is None:  # say so before anything trains
        raise SimflError(RAY_MISSING)
    points = plan_points(path, vary, seeds, base_overrides)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [(sc, out_dir / "points" / _slug(i, list(v.values()), sc.seed)) for i, (v, sc) in enumerate(points)]
    say = progress_printer(progress)
    say(f"{len(todo)} points into {out_dir}")
    # Points that share a learning plan: the first of each runs alone (it trains and fills the cache), the rest
    # replay from the cache, so parallel executors never train the same plan twice.
    first: dict[tuple[str, int], int] = {}
    for i, (sc, _) in enumerate(todo):
        if sc.workload == "fedad":
            first.setdefault(learning_identity(sc.experiment, sc.seed), i)
    results: dict[int, dict[str, Any]] = {}
    for i in sorted(set(first.values())):
        say(f"point {i + 1}/{len(todo)} (learns): {todo[i][1].name}")
        results[i] = run_point(*todo[i], progress=progress)
    rest = [i for i in range(len(todo)) if i not in results]
    if executor == "ray":
        for k, r in _run_ray([todo[i] for i in rest], address, jobs if jobs > 1 else 2, say):
            i = rest[k]
            results[i] = r
            say(f"point {i + 1}/{len(todo)} {'read back' if r.get('resumed') else 'done'} (ray): {todo[i][1].name}")
    elif jobs > 1:
        # spawn, not fork: a forked child of a process that ran torch can deadlock on a lock held at fork time
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futs = {i: pool.submit(run_point, *todo[i]) for i in rest}
            for i, f in futs.items():
                results[i] = f.result()
                say(f"point {i + 1}/{len(todo)} done")
    else:
        for i in rest:
            results[i] = run_point(*todo[i])
            say(f"point {i + 1}/{len(todo)} {'read back' if results[i].get('resumed') else 'done'}: "
                f"{todo[i][1].name}")
    table = pl.DataFrame([row_of(points[i][0], results[i]) for i in range(len(todo))], infer_schema_length=None)
    table.write_parquet(out_dir / "sweep.parquet")
    table.write_csv(out_dir / "sweep.csv")
    plot_sweep(table, [k for k, _ in vary], out_dir)
    say(f"table: {out_dir / 'sweep.parquet'} ({table.height} rows)")
    return table


def crossover(x: Sequence[float], fed: Sequence[float], cen: Sequence[float]) -> float | None:
    """The x (interpolated in log x) where the federated duration stops being longer than the centralised one,
    or the other way round; None without a sign change."""
    pts = sorted((a, b - c) for a, b, c in zip(x, fed, cen) if a and b is not None and c is not None)
    for (x0, d0), (x1, d1) in itertools.pairwise(pts):
        if d0 == 0:
            return x0
        if (d0 < 0) != (d1 < 0):
            f = d0 / (d0 - d1)
            return math.exp(math.log(x0) + f * (math.log(x1) - math.log(x0)))
    return None


def plot_sweep(table: pl.DataFrame, keys: list[str], out_dir: Path) -> float | None:
    """Phase durations of the method vs the centralised upload against the first numeric varied key."""
    key = next((k for k in keys if table[f"{k}__value"].null_count() == 0), None)
    if key is None or "duration_s_method" not in table.columns or table["duration_s_method"].null_count():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table.group_by(f"{key}__value").agg(pl.col("duration_s_phase1", "duration_s_phase2", "duration_s_method",
                                                   "centralised_upload_s", "duration_s_centralised").mean())
    t = t.sort(f"{key}__value")
    x = t[f"{key}__value"].to_list()
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(x, t["duration_s_phase1"], "o-", label="federated: phase I")
    ax.plot(x, t["duration_s_phase2"], "o-", label="federated: phase II")
    ax.plot(x, t["duration_s_method"], "o-", lw=2.5, label="federated: phase I + II")
    cross = None
    if t["centralised_upload_s"].null_count() == 0:
        ax.plot(x, t["centralised_upload_s"], "s--", lw=2.5, label="centralised: raw data upload")
        cross = crossover(x, t["duration_s_method"].to_list(), t["centralised_upload_s"].to_list())
        if cross is not None:
            ax.axvline(cross, color="k", ls=":", label=f"crossover ~ {cross:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(key + (" (bit/s)" if "bandwidth" in key else ""))
    ax.set_ylabel("simulated duration (s)")
    ax.set_title("Federated method vs centralising the data")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "durations.png", dpi=110)
    plt.close(fig)
    (out_dir / "crossover.json").write_text(json.dumps({"key": key, "crossover": cross}, indent=2) + "\n")
    return cross


def seed_spread(table: pl.DataFrame, keys: list[str], stats: Sequence[str]) -> list[str]:
    """One line per grid point: mean +- sample standard deviation of each statistic over the point's seeds."""
    present = [c for c in stats if c in table.columns and table[c].null_count() < table.height]
    lines = []
    groups = table.partition_by(keys, maintain_order=True) if keys else [table]
    for g in groups:
        where = ", ".join(f"{k} = {g[k][0]}" for k in keys) or "the scenario"
        parts = [f"{c} {g[c].mean():.4g} +- {g[c].std():.2g}" for c in present]
        lines.append(f"{where}, over {g.height} seeds (mean +- sd): " + ", ".join(parts))
    return lines


def sweep_cli(args: argparse.Namespace) -> int:
    path = Path(args.scenario) if args.scenario else DEFAULT_SCENARIO
    vary = parse_vary(args.vary)
    if not vary and args.seeds < 2:
        raise SimflError("give at least one --vary KEY=V1,V2,... or --seeds N with N >= 2 (how much the seed matters)")
    out = Path(args.out) if args.out else Path("runs") / f"sweep-{path.stem}"
    table = run_sweep(path, vary, out, seeds=args.seeds, base_overrides=args.overrides, executor=args.executor,
                      jobs=args.jobs, address=args.address, progress=not args.quiet)
    keys = [k for k, _ in vary]
    stats = ("duration_s_method", "centralised_upload_s", "auc_local", "auc_method", "auc_ideal", "ari")
    cols = keys + [c for c in ("seed", *stats) if c in table.columns]
    with pl.Config(tbl_rows=50, tbl_cols=12, fmt_str_lengths=20):
        print(table.select(cols))
    if args.seeds > 1:
        for line in seed_spread(table, keys, stats):
            print(line)
    print(f"simfl: sweep table in {out / 'sweep.parquet'} and {out / 'sweep.csv'}")
    return 0
