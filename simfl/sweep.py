"""Parameter sweeps: a grid of scenario overrides x seeds, one table row per point, resumable.

`--vary` takes one key and its values, in one of two forms:

    KEY=V1,V2,...          plain values: numbers and true/false as such, anything else a string ("10 Mbps");
                           a value in double quotes keeps its commas: KEY=12 kB,"12,868 B"
    KEY=[V1, V2, ...]      a TOML (or JSON) array: any value, lists included, e.g.
                           'synthetic.message_bytes=["12,868 B", "1 kB"]'
                           'synthetic.pattern=[["gather"], ["allpairs"]]'

Learning results do not depend on the network (without deadlines or faults), so a sweep first runs one point of
each distinct learning identity (`simfl.plan.learning_identity`), which fills the learning cache (`simfl.cache`),
then runs every other point on its network, reading its learning from that cache. A point whose directory
already holds a finished run of the same resolved scenario is read back, not recomputed: an interrupted sweep,
run again, resumes. Network-only (synthetic) scenarios need no learning: every point is one network run.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.util
import itertools
import json
import math
import multiprocessing
import re
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from simfl.config import DEFAULT_SCENARIO, Scenario, ScenarioError, load_scenario, toml_value
from simfl.errors import SimflError
from simfl.runner import INCOMPLETE, preflight, run_scenario
from simfl.schema import MAX_SEED
from simfl.summary import FedadPart, RunSummary, SyntheticPart, read_summary
from simfl.units import parse_rate, parse_size, parse_time

PHASES = ("phase1", "phase2", "ideal", "centralised", "local")
EXECUTORS = ("local", "ray")
VARY_EXAMPLE = "--vary 'synthetic.pattern=[[\"gather\"], [\"allpairs\"]]'"
# Errors of the file system a sweep writes to (permissions, read-only or full disks): one line, not a traceback.
_DISK_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
                errno.ENAMETOOLONG}
Outcome = tuple[int, RunSummary, bool]  # (point index, its summary, read back from an earlier run)


@dataclass(frozen=True)
class Level:
    """One value of a varied key: `text` as the table and directory names show it, `value` as the scenario gets it."""

    text: str
    value: Any


Vary = list[tuple[str, list[Level]]]


# ----------------------------------------------------------------------------------------------------- --vary
def parse_vary(items: Sequence[str]) -> Vary:
    """`KEY=V1,V2,...` or `KEY=[V1, V2, ...]` -> (KEY, levels); errors name the bad item (see the module doc)."""
    out: Vary = []
    for item in items:
        if "=" not in item:
            raise SimflError(f"--vary {item}: expected KEY=V1,V2,... or KEY=[V1, V2, ...], e.g. --vary "
                             "experiment.rounds=2,5")
        key, raw = (s.strip() for s in item.split("=", 1))
        if not key or not raw:
            raise SimflError(f"--vary {item}: needs a key and at least one value")
        if key in [k for k, _ in out]:
            raise SimflError(f"--vary {key}: given twice (give all its values in one --vary)")
        levels = _array_levels(key, raw) if raw.startswith("[") else _plain_levels(key, raw)
        if not levels:
            raise SimflError(f"--vary {key}={raw}: needs at least one value")
        seen = Counter(toml_value(lv.value) for lv in levels)
        twice = [v for v, n in seen.items() if n > 1]
        if twice:
            raise SimflError(f"--vary {key}: value {twice[0]} given twice")
        out.append((key, levels))
    return out


# a plain value: "quoted" (commas kept) or unquoted up to the next comma; then a comma or the end
_PLAIN = re.compile(r'\s*(?:"([^"]*)"|([^",]*?))\s*(,|\Z)')


def _plain_levels(key: str, raw: str) -> list[Level]:
    levels: list[Level] = []
    pos = 0
    while True:
        m = _PLAIN.match(raw, pos)
        if m is None:
            raise SimflError(f'--vary {key}={raw}: misplaced or unclosed double quote in value {len(levels) + 1}; '
                             f'quote whole values ("12,868 B") or give an array: {key}=["a, b", "c"]')
        quoted, plain, sep = m.groups()
        if quoted is None and not plain:
            raise SimflError(f"--vary {key}={raw}: value {len(levels) + 1} is empty (a stray comma?)")
        levels.append(Level(quoted, quoted) if quoted is not None else Level(plain, _scalar(plain)))
        if not sep:
            return levels
        pos = m.end()


def _toml(raw: str) -> Any:
    """`raw` read as one TOML value (tomllib.TOMLDecodeError when it is not one)."""
    d = tomllib.loads(f"v = {raw}")
    if len(d) != 1:
        raise tomllib.TOMLDecodeError("text after the value")
    return d["v"]


def _scalar(text: str) -> Any:
    """A plain value: a TOML number or boolean as such, anything else the string itself."""
    try:
        v = _toml(text)
    except tomllib.TOMLDecodeError:
        return text
    return v if isinstance(v, int | float) else text


def _array_levels(key: str, raw: str) -> list[Level]:
    try:
        values = _toml(raw)
    except tomllib.TOMLDecodeError as e:
        try:
            values = json.loads(raw)
        except ValueError:
            why = re.sub(r" \(at line \d+, column \d+\)", "", str(e))
            with contextlib.suppress(tomllib.TOMLDecodeError):
                _toml(f"[{raw}]")
                why += f"; several arrays? put them in one: {key}=[{raw}]"
            raise SimflError(f"--vary {key}={raw}: not a TOML or JSON array ({why}); e.g. {VARY_EXAMPLE}") from None
    if not isinstance(values, list):
        raise SimflError(f"--vary {key}={raw}: expected an array of values, e.g. {VARY_EXAMPLE}")
    if any(v is None for v in values):
        raise SimflError(f"--vary {key}={raw}: null is not a scenario value")
    return [Level(v if isinstance(v, str) else toml_value(v), v) for v in values]


def numeric(value: Any) -> float | None:
    """A number for plotting: plain numbers, rates (bit/s), times (s) or sizes (bytes); None if none parse."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    for parse in (float, parse_rate, parse_time, parse_size):
        try:
            return float(parse(value))
        except (ValueError, TypeError, SimflError):
            continue
    return None


# ------------------------------------------------------------------------------------------------------ grid
def check_options(*, seeds: int, jobs: int, executor: str, address: str | None) -> None:
    """The sweep's own options, before anything is loaded or written."""
    if seeds < 1:
        raise SimflError(f"--seeds {seeds}: must be >= 1")
    if jobs < 1:
        raise SimflError(f"--jobs {jobs}: must be >= 1")
    if executor not in EXECUTORS:
        raise SimflError(f"--executor {executor}: choose {' or '.join(EXECUTORS)}")
    if address and executor != "ray":
        raise SimflError(f"--address {address}: only used with --executor ray")


def _slug(i: int, texts: Sequence[str], seed: int) -> str:
    parts = [f"p{i:03d}", *(re.sub(r"[^A-Za-z0-9.]+", "", v) for v in texts), f"seed{seed}"]
    return "-".join(parts)[:80]


def _vary_error(e: ScenarioError, values: dict[str, Level]) -> SimflError:
    """A point's scenario error, told as the --vary value it comes from."""
    msg = str(e)
    for k, lv in values.items():
        said = f"--set {k}={toml_value(lv.value)}:"
        if said in msg:
            return SimflError(msg.replace(said, f"--vary {k}={lv.text}:", 1))
    point = ", ".join(f"{k}={lv.text}" for k, lv in values.items())
    return SimflError(f"--vary point {point}: {msg}")


def plan_points(path: Path, vary: Vary, seeds: int,
                base_overrides: Sequence[str] = ()) -> list[tuple[dict[str, Level], Scenario]]:
    """Every grid point's values and validated scenario (all validated and checked by `preflight` before anything
    runs). Each combination of values runs with seeds s, s + 1, ..., s + seeds - 1, s its scenario's seed."""
    load_scenario(path, list(base_overrides))  # errors of the file and of --set first
    points = []
    for combo in itertools.product(*[levels for _, levels in vary]):
        values = {k: lv for (k, _), lv in zip(vary, combo)}
        overrides = [*base_overrides, *(f"{k}={toml_value(lv.value)}" for k, lv in values.items())]
        try:
            first = load_scenario(path, overrides)
            preflight(first)
            if first.seed + seeds - 1 > MAX_SEED:
                raise SimflError(f"--seeds {seeds}: seeds {first.seed}..{first.seed + seeds - 1} pass the largest "
                                 f"seed, 2^32 - 1 = {MAX_SEED}; give fewer seeds or a smaller scenario seed")
            points += [(values, load_scenario(path, overrides, seed=first.seed + s) if s else first)
                       for s in range(seeds)]
        except ScenarioError as e:
            raise _vary_error(e, values) from None
    return points


# ---------------------------------------------------------------------------------------------------- points
def point_summary(out: Path) -> RunSummary:
    """The summary of the finished run in `out`: the one place a sweep reads run summaries."""
    return read_summary(out)


@contextlib.contextmanager
def disk_errors(where: Path) -> Iterator[None]:
    """File-system failures (permissions, read-only or full disk) under `where` as one SimflError line."""
    try:
        yield
    except OSError as e:
        if e.errno not in _DISK_ERRNOS:
            raise
        raise SimflError(f"{e.filename or where}: cannot write ({e.strerror}); make room or fix the permissions, "
                         "then run the sweep again (finished points are kept)") from None


def finished(out: Path, sc: Scenario) -> RunSummary | None:
    """The summary of a finished run of `sc` in `out`; None when there is none."""
    try:
        if (out / INCOMPLETE).exists() or (out / "scenario.toml").read_text(encoding="utf-8") != sc.to_toml():
            return None
        return point_summary(out)
    except (OSError, ValueError, SimflError):
        return None


def run_point(sc: Scenario, out: Path, progress: bool = False) -> tuple[RunSummary, bool]:
    """Run one point, or read it back when it already finished with the same scenario: (summary, read back)."""
    done = finished(out, sc)
    if done is not None:
        return done, True
    with disk_errors(out):
        if out.exists() and any(out.iterdir()) and not (out / INCOMPLETE).exists():
            raise SimflError(f"{out}: holds a different finished run; remove it or sweep into another directory")
        run_scenario(sc, out, progress=progress)
        return point_summary(out), False


def _prepare_out(out_dir: Path) -> None:
    """Create the sweep directory and check it takes files: one line when it cannot."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SimflError(f"--out {out_dir}: exists and is not a directory")
    try:
        (out_dir / "points").mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".simfl-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise SimflError(f"--out {out_dir}: cannot write there ({e.strerror or e}); choose a writable "
                         "directory") from None


def _run_serial(todo: list[tuple[Scenario, Path]], idx: Sequence[int]) -> Iterator[Outcome]:
    for i in idx:
        yield i, *run_point(*todo[i])


def _run_pool(todo: list[tuple[Scenario, Path]], idx: Sequence[int], jobs: int) -> Iterator[Outcome]:
    # spawn, not fork: a forked child of a process that ran torch can deadlock on a lock held at fork time
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futs = {pool.submit(run_point, *todo[i]): i for i in idx}
        try:
            for f in as_completed(futs):
                yield futs[f], *f.result()
        finally:  # on an error or an interrupt, start no further point
            pool.shutdown(cancel_futures=True)


def _run_points(todo: list[tuple[Scenario, Path]], executor: str, jobs: int, address: str | None,
                say: Callable[[str], None], progress: bool) -> dict[int, RunSummary]:
    """Every point's summary, by index. Points that share their learning: the first of each runs alone (it trains
    and fills the cache), the rest read it from the cache, so parallel executors never train the same thing twice."""
    first: dict[str, int] = {}
    if any(sc.workload == "fedad" for sc, _ in todo):
        from simfl.plan import learning_identity

        for i, (sc, _) in enumerate(todo):
            if sc.workload == "fedad":
                first.setdefault(learning_identity(sc.experiment, sc.seed), i)
    results: dict[int, RunSummary] = {}
    for i in sorted(set(first.values())):
        say(f"point {i + 1}/{len(todo)} (learns): {todo[i][1].name}")
        results[i] = run_point(*todo[i], progress=progress)[0]
    rest = [i for i in range(len(todo)) if i not in results]
    if executor == "ray":
        from simfl.sweep_ray import run_ray

        runs = ((rest[k], s, r) for k, s, r in run_ray([todo[i] for i in rest], address, max(jobs, 2), say))
    else:
        runs = _run_pool(todo, rest, jobs) if jobs > 1 and len(rest) > 1 else _run_serial(todo, rest)
    via = " (ray)" if executor == "ray" else ""
    for i, summary, resumed in runs:
        results[i] = summary
        say(f"point {i + 1}/{len(todo)} {'read back' if resumed else 'done'}{via}: {todo[i][1].name}")
    return results


def run_sweep(path: Path, vary: Vary, out_dir: Path, *, seeds: int = 1, base_overrides: Sequence[str] = (),
              executor: str = "local", jobs: int = 1, address: str | None = None,
              progress: bool = True) -> pl.DataFrame:
    """Run the grid into out_dir (points/, sweep.parquet, sweep.csv, plots) and return the table."""
    check_options(seeds=seeds, jobs=jobs, executor=executor, address=address)
    if executor == "ray" and importlib.util.find_spec("ray") is None:  # say so before anything trains
        from simfl.sweep_ray import RAY_MISSING

        raise SimflError(RAY_MISSING)
    points = plan_points(path, vary, seeds, base_overrides)
    _prepare_out(out_dir)
    todo = [(sc, out_dir / "points" / _slug(i, [lv.text for lv in v.values()], sc.seed))
            for i, (v, sc) in enumerate(points)]
    say = _progress(progress)
    say(f"{len(todo)} points into {out_dir}")
    results = _run_points(todo, executor, jobs, address, say, progress)
    table = pl.DataFrame([row_of(points[i][0], results[i]) for i in range(len(todo))], infer_schema_length=None)
    table = table.select(pl.exclude("wall_time_s"), "wall_time_s")  # last, after the columns of every workload
    with disk_errors(out_dir):
        table.write_parquet(out_dir / "sweep.parquet")
        table.write_csv(out_dir / "sweep.csv")
        plot_sweep(table, [k for k, _ in vary], out_dir)
    say(f"table: {out_dir / 'sweep.parquet'} ({table.height} rows)")
    return table


def _progress(enabled: bool) -> Callable[[str], None]:
    if not enabled:
        return lambda _: None
    from simfl.progress import progress_printer

    return progress_printer(True)


# ----------------------------------------------------------------------------------------------------- table
def row_of(values: dict[str, Level], summary: RunSummary) -> dict[str, Any]:
    """One table row: the varied values (as written and as numbers), the run's totals (messages, payload and wire
    bytes, simulated time), then the workload's own columns (see `fedad_columns`, `synthetic_columns`; fedad also
    learn_cached / learn_computed: the learning results the point read from the cache and computed)."""
    row: dict[str, Any] = {}
    for k, lv in values.items():
        row[k] = lv.text
        row[f"{k}__value"] = numeric(lv.value)
    row["seed"] = summary.seed
    row["workload"] = summary.workload
    t = summary.totals
    row.update(messages=t.messages, payload_bytes=t.payload_bytes, wire_bytes=t.wire_bytes, sim_time_s=t.sim_time_s)
    if summary.synthetic is not None:
        row.update(synthetic_columns(summary.synthetic))
    elif summary.fedad is not None:
        row.update(fedad_columns(summary.fedad))
        cache = summary.cache or {}
        row["learn_cached"], row["learn_computed"] = cache.get("cached"), cache.get("computed")
    row["wall_time_s"] = t.wall_time_s
    return row


def synthetic_columns(part: SyntheticPart) -> dict[str, Any]:
    """message_bytes, target, and per pattern (in order; a repeated pattern gets _2, _3, ...) its duration and
    message count: duration_s_<pattern>, messages_<pattern>."""
    row: dict[str, Any] = {"message_bytes": part.message_bytes, "target": part.target}
    seen: Counter[str] = Counter()
    for p in part.patterns:
        seen[p.pattern] += 1
        name = p.pattern if seen[p.pattern] == 1 else f"{p.pattern}_{seen[p.pattern]}"
        row[f"duration_s_{name}"] = p.duration_s
        row[f"messages_{name}"] = p.messages
    return row


def fedad_columns(part: FedadPart) -> dict[str, Any]:
    """Per phase payload/wire bytes and durations, the method's duration, the centralised upload, AUCs, ARI."""
    from simfl.plan import APPROACHES  # torch: only for learning sweeps

    row: dict[str, Any] = {}
    pb, wb, du = part.payload_bytes, part.wire_bytes, part.duration_s
    for p in PHASES:
        row[f"payload_bytes_{p}"] = pb.get(p)
        row[f"wire_bytes_{p}"] = wb.get(p)
        row[f"duration_s_{p}"] = du.get(p)
    row["duration_s_method"] = (du["phase1"] + du["phase2"]) if "phase1" in du and "phase2" in du else None
    row["centralised_upload_s"] = part.centralised_upload_s
    for a in APPROACHES:
        row[f"auc_{a}"] = part.auc_mean.get(a)
    row["communities"] = part.k
    row["ari"] = part.ari
    row["learning_from_cache"] = part.learning_from_cache
    return row


def synthetic_durations(table: pl.DataFrame) -> list[str]:
    """The per-pattern duration columns of a synthetic sweep's table, plus sim_time_s when there are several."""
    cols = [c for c in table.columns if c.startswith("duration_s_")]
    return cols + ["sim_time_s"] if len(cols) > 1 else cols


# ----------------------------------------------------------------------------------------------------- plots
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
    """durations.png against the first numeric varied key. Learning sweeps: phase durations of the method vs the
    centralised upload (and their crossover, also in crossover.json, which this returns). Synthetic sweeps: each
    pattern's duration (against the first varied key as categories when none is numeric)."""
    if not keys or table.height == 0:
        return None
    if (table["workload"] == "synthetic").all():
        _plot_synthetic(table, keys, out_dir)
        return None
    return _plot_fedad(table, keys, out_dir)


def _numeric_key(table: pl.DataFrame, keys: list[str]) -> str | None:
    return next((k for k in keys if table[f"{k}__value"].null_count() == 0), None)


def _axes(title: str, xlabel: str) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    ax.set_title(title)
    ax.set_xlabel(xlabel + (" (bit/s)" if "bandwidth" in xlabel else ""))
    ax.set_ylabel("simulated duration (s)")
    return fig, ax


def _save(fig: Any, ax: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_fedad(table: pl.DataFrame, keys: list[str], out_dir: Path) -> float | None:
    key = _numeric_key(table, keys)
    if key is None or table["duration_s_method"].null_count():
        return None
    t = table.group_by(f"{key}__value").agg(pl.col("duration_s_phase1", "duration_s_phase2", "duration_s_method",
                                                   "centralised_upload_s", "duration_s_centralised").mean())
    t = t.sort(f"{key}__value")
    x = t[f"{key}__value"].to_list()
    fig, ax = _axes("Federated method vs centralising the data", key)
    ax.plot(x, t["duration_s_phase1"], "o-", label="federated: phase I")
    ax.plot(x, t["duration_s_phase2"], "o-", label="federated: phase II")
    ax.plot(x, t["duration_s_method"], "o-", lw=2.5, label="federated: phase I + II")
    cross = None
    if t["centralised_upload_s"].null_count() == 0:
        ax.plot(x, t["centralised_upload_s"], "s--", lw=2.5, label="centralised: raw data upload")
        cross = crossover(x, t["duration_s_method"].to_list(), t["centralised_upload_s"].to_list())
        if cross is not None:
            ax.axvline(cross, color="k", ls=":", label=f"crossover ~ {cross:.3g}")
    if min(x) > 0:  # a sweep from 0 (e.g. loss) keeps a linear axis
        ax.set_xscale("log")
    ax.set_yscale("log")
    _save(fig, ax, out_dir / "durations.png")
    (out_dir / "crossover.json").write_text(json.dumps({"key": key, "crossover": cross}, indent=2) + "\n")
    return cross


def _plot_synthetic(table: pl.DataFrame, keys: list[str], out_dir: Path) -> None:
    """One line per pattern and per combination of the other varied keys, each averaged over the seeds."""
    key = _numeric_key(table, keys)
    xkey = key or keys[0]
    xcol = f"{key}__value" if key else xkey
    others = [k for k in keys if k != xkey]
    categories = table[xkey].unique(maintain_order=True).to_list()
    fig, ax = _axes("Synthetic exchange: simulated duration", xkey)
    for g in table.partition_by(others, maintain_order=True) if others else [table]:
        cols = synthetic_durations(g.select(c for c in g.columns if g[c].null_count() < g.height))
        t = g.group_by(xcol, maintain_order=True).agg(pl.col(cols).mean())
        t = t.sort(xcol) if key else t
        x = t[xcol].to_list() if key else [categories.index(v) for v in t[xcol]]
        tag = ", ".join(f"{k} = {g[k][0]}" for k in others)
        for c in cols:
            label = "all patterns" if c == "sim_time_s" else c.removeprefix("duration_s_")
            ax.plot(x, t[c].to_numpy(), "o-" if key else "o", lw=2.5 if c == "sim_time_s" else 1.5,
                    label=f"{label} ({tag})" if tag else label)
    if key is None:
        ax.set_xticks(range(len(categories)), categories)
    elif table[xcol].min() > 0:
        ax.set_xscale("log")
    if table.select(pl.min_horizontal(synthetic_durations(table))).to_series().drop_nulls().gt(0).all():
        ax.set_yscale("log")
    _save(fig, ax, out_dir / "durations.png")


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


# ------------------------------------------------------------------------------------------------------- CLI
def sweep_cli(args: argparse.Namespace) -> int:
    check_options(seeds=args.seeds, jobs=args.jobs, executor=args.executor, address=args.address)
    path = Path(args.scenario) if args.scenario else DEFAULT_SCENARIO
    vary = parse_vary(args.vary)
    if not vary and args.seeds < 2:
        raise SimflError("give at least one --vary KEY=V1,V2,... or --seeds N with N >= 2 (how much the seed matters)")
    out = Path(args.out) if args.out else Path("runs") / f"sweep-{path.stem}"
    table = run_sweep(path, vary, out, seeds=args.seeds, base_overrides=args.overrides, executor=args.executor,
                      jobs=args.jobs, address=args.address, progress=not args.quiet)
    keys = [k for k, _ in vary]
    if (table["workload"] == "synthetic").all():
        stats: Sequence[str] = (*synthetic_durations(table), "messages", "wire_bytes")
    else:
        stats = ("duration_s_method", "centralised_upload_s", "auc_local", "auc_method", "auc_ideal", "ari")
    cols = keys + [c for c in ("seed", *stats, "learn_cached", "learn_computed") if c in table.columns]
    with pl.Config(tbl_rows=50, tbl_cols=12, fmt_str_lengths=20):
        print(table.select(cols))
    if args.seeds > 1:
        for line in seed_spread(table, keys, stats):
            print(line)
    print(f"simfl: sweep table in {out / 'sweep.parquet'} and {out / 'sweep.csv'}")
    return 0
