"""Golden runs: the sha256 of a fedad run's trace files, kept in tests/golden.json, and their regenerator.

A change that must not move a message or an AUC (refactoring the learning, the cache, the node processes) is
checked against these digests: messages.parquet, links.parquet and auc.parquet byte for byte, compute.parquet
without its measured `wall_s` column, and the summary's learning results (communities, bytes, AUC means of both
detectors). Regenerate them on the code that defines the reference, then keep them:

    PYTHONPATH=. python tests/golden.py --write              # the tiny cases (about a minute)
    PYTHONPATH=. python tests/golden.py --write --default    # also the capped default preset (several minutes)
    PYTHONPATH=. python tests/golden.py [--default]          # compare only: prints each case's differences

`--write` replaces the digests of the cases it ran and keeps the others. tests/test_golden.py compares the tiny
cases. The runs use the simfl that Python imports: to take the reference from another checkout (the code before a
change, which need not have this file), run this file from this checkout with the reference first on the path:
``PYTHONPATH=/path/to/reference python tests/golden.py --write --default`` (its topologies/default.toml is used
too; run the file, not ``python -m``, which would put the working folder first).

The digests in golden.json were taken on main 3fda9e1 (the learning planned ahead, before the learner; with the
TCP handshake, imperfect links and background traffic). One case
differs by design from that code: with the server aggregating and detector "last_fit", round 1's models leave the
server when the leader has found the communities, no longer at t = 0 (the server cannot know them earlier). Its
AUCs stay equal: `COMPARED` limits that case to them.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import polars as pl

GOLDEN = Path(__file__).resolve().parent / "golden.json"
TINY_TOML = "tiny.toml"  # written from conftest.TINY (shards capped as the other tests cap them) into the work folder
# name -> (scenario, overrides); the tiny cases share their learning (one cache), so only the first trains
CASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "tiny-global-member": (TINY_TOML, ()),
    "tiny-last_fit-member": (TINY_TOML, ('experiment.detector="last_fit"',)),
    "tiny-global-server": (TINY_TOML, ('experiment.aggregator="server"',)),
    "tiny-last_fit-server": (TINY_TOML, ('experiment.detector="last_fit"', 'experiment.aggregator="server"')),
    "default-capped": ("default.toml", ("experiment.max_samples_per_client=100",)),  # in the code's topologies/
}
TINY_CASES = tuple(c for c in CASES if c.startswith("tiny-"))
COMPARED = {"tiny-last_fit-server": ("auc",)}  # the digests compared where not all are (see the docstring)
# the summary's learning results (one digest over them)
SUMMARY_KEYS = ("communities", "k", "ari", "nmi", "payload_bytes", "wire_bytes", "closed_form_bytes",
                "duration_s", "auc_mean", "auc_mean_by_detector", "auc_by_class", "samples_per_client")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digests(run_dir: Path) -> dict[str, str]:
    """The digests of one finished run folder."""
    out = {name: _sha((run_dir / f"{name}.parquet").read_bytes()) for name in ("messages", "links", "auc")}
    buf = io.BytesIO()
    pl.read_parquet(run_dir / "compute.parquet").drop("wall_s").write_parquet(buf, compression="zstd",
                                                                              statistics=True)
    out["compute_without_wall_s"] = _sha(buf.getvalue())
    summary = json.loads((run_dir / "summary.json").read_text())
    out["summary_learning"] = _sha(json.dumps({k: summary.get(k) for k in SUMMARY_KEYS}, sort_keys=True).encode())
    return out


@contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_cases(names: Sequence[str], work: Path) -> dict[str, dict[str, str]]:
    """Run each case into `work`/<name> (one learning cache for all of them) and return their digests."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import TINY, TINY_SAMPLES

    import simfl
    from simfl.config import load_scenario
    from simfl.runner import run_scenario

    topologies = Path(simfl.__file__).resolve().parent.parent / "topologies"
    (work / TINY_TOML).write_text(TINY + f"max_samples_per_client = {TINY_SAMPLES}\n")
    found: dict[str, dict[str, str]] = {}
    with _env(SIMFL_CACHE=str(work / "cache")):
        for name in names:
            path, overrides = CASES[name]
            scenario = load_scenario(work / TINY_TOML if path == TINY_TOML else topologies / path, overrides)
            run_scenario(scenario, work / name, progress=False)
            found[name] = digests(work / name)
    return found


def compare(found: dict[str, dict[str, str]], golden: dict[str, dict[str, str]]) -> list[str]:
    """One line per compared digest that differs from (or is missing in) `golden`."""
    return [f"{case}: {what} differs" for case, got in found.items() for what, digest in got.items()
            if what in COMPARED.get(case, got) and golden.get(case, {}).get(what) != digest]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="store the digests in tests/golden.json")
    ap.add_argument("--default", action="store_true", help="also run the capped default preset")
    ap.add_argument("--work", type=Path, help="folder for the runs (default: a temporary one)")
    args = ap.parse_args(argv)
    names = TINY_CASES + (("default-capped",) if args.default else ())
    with tempfile.TemporaryDirectory(prefix="simfl-golden-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        found = run_cases(names, work)
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if args.write:
        GOLDEN.write_text(json.dumps({**golden, **found}, indent=2, sort_keys=True) + "\n")
        print(f"wrote {len(found)} cases to {GOLDEN}")
        return 0
    diffs = compare(found, golden)
    print("\n".join(diffs) or f"{len(found)} cases equal to {GOLDEN.name}")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
