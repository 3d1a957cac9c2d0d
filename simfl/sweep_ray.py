"""The Ray executor of `simfl sweep`: each point that has not finished yet runs as a Ray task.

Without an address a private local Ray instance is started (and shut down afterwards). With one, the sweep connects
to that cluster, whose nodes need simfl installed and the sweep and cache directories at the same paths (a shared
file system). Only Ray's public API is used: a cluster with token authentication is reached through Ray's own
environment variables, RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN, in the file RAY_AUTH_TOKEN_PATH
names, or in ~/.ray/auth_token.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from simfl.config import Scenario
from simfl.errors import SimflError
from simfl.sweep import Outcome, finished, run_point

__all__ = ["run_ray", "RAY_MISSING", "RAY_AUTH"]

RAY_MISSING = "--executor ray needs Ray: pip install 'simfl[ray]'"
RAY_AUTH = ("for a cluster with token authentication set RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN, "
            "in the file named by RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token")
_QUIET = {"log_to_driver": False, "logging_level": logging.ERROR}


def run_ray(jobs: list[tuple[Scenario, Path]], address: str | None, cpus: int,
            say: Callable[[str], None]) -> Iterator[Outcome]:
    """Run points as Ray tasks; yields (index in jobs, summary, read back) as each finishes. Points that already
    finished are read back here, so a resumed sweep starts no Ray at all."""
    todo = []
    for k, (sc, out) in enumerate(jobs):
        done = finished(out, sc)
        if done is None:
            todo.append(k)
        else:
            yield k, done, True
    if not todo:
        return
    try:
        import ray
    except ImportError as e:
        raise SimflError(RAY_MISSING) from e
    with _session(ray, address, cpus, say):
        task = ray.remote(run_point).options(runtime_env={"env_vars": _task_env()})
        yield from _collect(ray, {task.remote(jobs[k][0], jobs[k][1].resolve()): k for k in todo})


@contextlib.contextmanager
def _session(ray: Any, address: str | None, cpus: int, say: Callable[[str], None]) -> Iterator[None]:
    """Connected to `address`, or to a local instance of `cpus` CPUs; a session this process already has is used
    (and left open)."""
    if ray.is_initialized():
        yield
        return
    tmp = None
    try:
        if address:
            _connect(ray, address, say)
        else:
            tmp = tempfile.mkdtemp(prefix="simfl-ray-", dir="/tmp")  # short: Ray's socket paths live under it
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, object_store_memory=128 * 2**20,
                     _temp_dir=tmp, **_QUIET)
            say(f"ray: local instance with {cpus} CPUs")
        yield
    finally:
        ray.shutdown()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _connect(ray: Any, address: str, say: Callable[[str], None]) -> None:
    say(f"ray: connecting to {address}")
    hostport = re.fullmatch(r"(?:ray://)?([^:/]+):(\d+)/?", address)
    if hostport:  # Ray itself retries a dead address for minutes
        try:
            socket.create_connection((hostport[1], int(hostport[2])), timeout=10).close()
        except OSError as e:
            raise SimflError(f"--address {address}: no Ray cluster answers there ({e})") from None
    logging.getLogger("ray").setLevel(logging.ERROR)
    try:
        ray.init(address=address, **_QUIET)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SimflError(f"--address {address}: cannot connect to a Ray cluster there ({why}); {RAY_AUTH}") from None


def _task_env() -> dict[str, str]:
    """The tasks read their learning from the cache the driver filled: its absolute path (and the data
    directory, if $SIMFL_DATA names one) reach them through the task's environment."""
    from simfl.cache import default_cache_dir

    cache = default_cache_dir()
    env = {"SIMFL_CACHE": str(cache.resolve()) if cache is not None else "off"}
    if os.environ.get("SIMFL_DATA"):
        env["SIMFL_DATA"] = str(Path(os.environ["SIMFL_DATA"]).expanduser().resolve())
    return env


def _collect(ray: Any, pending: dict[Any, int]) -> Iterator[Outcome]:
    """Each task's outcome as it finishes; a point's own error (bad scenario, occupied directory, full disk) is
    raised as that error, not wrapped in Ray's."""
    from ray.exceptions import RayTaskError

    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            k = pending.pop(ref)
            try:
                summary, resumed = ray.get(ref)
            except RayTaskError as e:
                if isinstance(e.cause, SimflError):
                    raise e.cause from None
                raise
            yield k, summary, resumed
