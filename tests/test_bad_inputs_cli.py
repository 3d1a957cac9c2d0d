"""Bad command lines, paths, disks and signals: each ends with ONE line on stderr naming what and where, and its exit
status (2: the input or the environment; 130: SIGINT; 143: SIGTERM), never a traceback.

Network-only (synthetic) scenarios wherever the case needs no learning; the signal tests run a tiny fedad scenario
in a real `python -m simfl.cli run` process."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import simfl.runner
from simfl.cli import main
from simfl.runner import INCOMPLETE, LOCK

ROOT = Path(__file__).resolve().parent.parent
TOPO = ROOT / "topologies"
STAR = """
name = "star"
seed = 1
workload = "synthetic"
[[nodes]]
name = "s1"
kind = "switch"
[[node_groups]]
prefix = "c"
count = 3
uplink = { to = "s1", bandwidth = "100 Mbps", latency = "1 ms" }
[synthetic]
message_bytes = 1000
pattern = ["allpairs"]
"""
# the default scenario's fedad workload cut to 4 clients and one worker process: phase I trains for several
# seconds, time enough to stop it
FEDAD = [str(TOPO / "default.toml"), "--set", "experiment.classes=[1, 7]", "--set", "experiment.clients_per_class=2",
         "--set", "experiment.phase1_epochs=3", "--set", "experiment.rounds=1", "--set", "experiment.baselines=[]",
         "--set", "experiment.workers=1"]


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line on stderr (warnings the run printed before it, e.g. the incast check's, aside)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if not ln.startswith("simfl: warning: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A scenario, a finished run of it and an interrupted one (shared by the parametrised cases: read only)."""
    d = tmp_path_factory.mktemp("bad")
    sc = d / "star.toml"
    sc.write_text(STAR)
    assert main(["run", str(sc), "--quiet", "--out", str(d / "run")]) == 0
    (d / "broken.toml").write_text("name = [\n")
    part = d / "part"
    part.mkdir()
    (part / INCOMPLETE).write_text("simfl run of star (seed 1) started; it has not finished.\n")
    (part / "scenario.toml").write_text(STAR)
    return {"sc": sc, "run": d / "run", "part": part, "broken": d / "broken.toml", "dir": d}


# (argv with {placeholders}, exit status, what the one stderr line must name)
CASES = {
    "unknown flag": (["run", "{sc}", "--bogus"], ["--bogus"]),
    "misspelt flag": (["run", "{sc}", "--seeed", "3"], ["--seeed"]),
    "unknown command": (["frobnicate"], ["'frobnicate'"]),
    "no command": ([], ["command"]),
    "seed not a number": (["run", "{sc}", "--seed", "abc"], ["--seed", "'abc'"]),
    "seed negative": (["run", "{sc}", "--seed", "-1"], ["--seed", "'-1'", "0 to 4294967295"]),
    "seed 2^32": (["run", "{sc}", "--seed", "4294967296"], ["--seed", "'4294967296'", "0 to 4294967295"]),
    "seed huge": (["run", "{sc}", "--seed", "99999999999999999999"], ["--seed", "'99999999999999999999'"]),
    "seed fractional": (["run", "{sc}", "--seed", "1.5"], ["--seed", "'1.5'"]),
    "seed empty": (["run", "{sc}", "--seed", ""], ["--seed", "''"]),
    "seed without value": (["run", "{sc}", "--seed"], ["--seed", "expected one argument"]),
    "out without value": (["run", "{sc}", "--out"], ["--out", "expected one argument"]),
    "set without =": (["run", "{sc}", "--quiet", "--set", "nonsense"], ["--set nonsense", "KEY=VALUE"]),
    "set unknown key": (["run", "{sc}", "--quiet", "--set", "synthetic.patern=[]"], ["synthetic.patern"]),
    "set bad value": (["run", "{sc}", "--quiet", "--set", "synthetic.message_bytes=-5"],
                      ["synthetic.message_bytes = -5"]),
    "device unknown": (["run", "{sc}", "--quiet", "--device", "tpu"], ["experiment.device", "tpu"]),
    "scenario missing": (["run", "{dir}/missing.toml"], ["{dir}/missing.toml", "no such scenario file"]),
    "scenario is a folder": (["run", "{dir}"], ["{dir}", "is a directory"]),
    "scenario not TOML": (["run", "{broken}"], ["{broken}"]),
    "sweep seeds 0": (["sweep", "{sc}", "--seeds", "0"], ["--seeds", "'0'"]),
    "sweep jobs negative": (["sweep", "{sc}", "--jobs", "-3"], ["--jobs", "'-3'"]),
    "sweep executor unknown": (["sweep", "{sc}", "--executor", "dask"], ["--executor", "'dask'"]),
    "costs zero rounds": (["costs", "--rounds", "0"], ["--rounds", "0"]),
    "costs negative clients": (["costs", "--clients-per-class", "-3"], ["--clients-per-class", "-3"]),
    "costs zero classes": (["costs", "--classes", "0"], ["--classes"]),
    "costs zero communities": (["costs", "--communities", "0"], ["--communities"]),
    "costs more communities than clients": (["costs", "--communities", "91"], ["--communities", "k = 91", "n ="]),
    "costs negative model size": (["costs", "--phase2-params", "-1"], ["--phase2-params"]),
    "costs rounds not a number": (["costs", "--rounds", "ten"], ["--rounds", "'ten'"]),
    "costs negative samples": (["costs", "--samples-per-client", "-5"], ["--samples-per-client"]),
    "export without run": (["export"], ["RUN"]),
    "export without format": (["export", "{run}"], ["--format"]),
    "export of a missing run": (["export", "{dir}/nope", "--format", "csv"], ["{dir}/nope"]),
    "export of an interrupted run": (["export", "{part}", "--format", "csv"], ["{part}", "incomplete"]),
    "export of a file": (["export", "{sc}", "--format", "csv"], ["{sc}"]),
    "export format unknown": (["export", "{run}", "--format", "xml"], ["xml"]),
    "export out under a file": (["export", "{run}", "--format", "csv", "--out", "{sc}/x.csv"], ["{sc}"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_command_line(case: str, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    argv, needles = CASES[case]
    capsys.readouterr()
    fill = {k: str(v) for k, v in files.items()}
    assert main([a.format(**fill) for a in argv]) == 2
    line = one_line(capsys)
    assert line.startswith("simfl")
    for n in needles:
        assert n.format(**fill) in line


# ------------------------------------------------------------------------------------------ run folders (--out)
def run_star(files: dict[str, Path], out: Path | str, *extra: str) -> int:
    return main(["run", str(files["sc"]), "--quiet", "--out", str(out), *extra])


def test_out_under_a_file(files, tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("x")
    assert run_star(files, f / "run") == 2
    assert f"run folder {f / 'run'}: a part of this path is a file" in one_line(capsys)
    assert run_star(files, f) == 2
    assert f"run folder {f}: is a file, not a folder" in one_line(capsys)


def test_out_holds_a_finished_run(files, tmp_path, capsys):
    out = tmp_path / "done"
    assert run_star(files, out) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert run_star(files, out, "--seed", "9") == 2
    line = one_line(capsys)
    assert f"run folder {out}: already holds a finished run" in line and "--force" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_out_holds_other_files(files, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    assert run_star(files, out, "--force") == 2
    assert f"run folder {out}: holds other files (thesis.tex), not a simfl run" in one_line(capsys)
    assert (out / "thesis.tex").read_text() == "years of work"


def test_out_holds_a_foreign_incomplete_file(files, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / INCOMPLETE).write_text("my list of unfinished things")
    assert run_star(files, out) == 2
    assert f"run folder {out}: holds a file named INCOMPLETE that simfl did not write" in one_line(capsys)
    assert (out / INCOMPLETE).read_text() == "my list of unfinished things"


def test_out_locked_by_another_run(files, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    holder = subprocess.Popen(  # another process holds the run lock, as a running `simfl run` does
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "os.write(fd, str(os.getpid()).encode()); fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); "
         "time.sleep(60)", str(out / LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        t0 = time.perf_counter()
        assert run_star(files, out) == 2
        assert time.perf_counter() - t0 < 5  # at once, no waiting
        line = one_line(capsys)
        assert f"run folder {out}: another simfl run is writing into it right now (process {holder.pid}" in line
    finally:
        holder.kill()
        holder.wait()
    assert run_star(files, out) == 0  # the lock died with its holder


@pytest.fixture()
def mounted(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """mount(options) -> a small tmpfs folder, unmounted afterwards; the test is skipped where mounting is not
    allowed."""
    done: list[Path] = []

    def mount(options: str) -> Path:
        d = tmp_path / f"mnt{len(done)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(d)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        done.append(d)
        return d

    yield mount
    for d in done:
        subprocess.run(["umount", str(d)], check=False)


@pytest.fixture()
def read_only(tmp_path: Path, mounted) -> Iterator[Path]:
    """A folder nobody may write to: chmod 555, or (for root, who writes through permissions) a read-only mount."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
    else:
        yield mounted("ro,size=64k")


def test_out_read_only(files, read_only, capsys):
    assert run_star(files, read_only / "run") == 2
    line = one_line(capsys)
    assert f"run folder {read_only / 'run'}: cannot use it" in line
    assert ("Read-only file system" in line) or ("Permission denied" in line)


def test_export_out_read_only(files, read_only, capsys):
    capsys.readouterr()
    assert main(["export", str(files["run"]), "--format", "csv", "--out", str(read_only / "m.csv")]) == 2
    line = one_line(capsys)
    assert str(read_only) in line and any(w in line.lower() for w in ("read-only file system", "permission denied"))


def test_out_on_a_full_disk(files, mounted, capsys):
    """A real full disk: 64 kB of tmpfs, while the all-pairs run of 90 clients writes ~1 MB of traces."""
    disk = mounted("size=64k")
    out = disk / "run"
    assert main(["run", str(TOPO / "allpairs-90.toml"), "--quiet", "--out", str(out)]) == 2
    line = one_line(capsys)
    assert str(out) in line and "No space left on device" in line and "the disk is full" in line
    assert (out / INCOMPLETE).exists() and not (out / "summary.json").exists()


@pytest.mark.parametrize("error", [
    lambda out: OSError(errno.ENOSPC, "No space left on device", str(out / "messages.parquet")),  # names its file
    lambda out: OSError("No space left on device (os error 28)"),  # polars' csv writer: no errno, no file name
    lambda out: RuntimeError("parquet: File out of specification: underlying IO error: No space left on device "
                             "(os error 28)"),  # polars' parquet writer
])
def test_writers_fail_for_a_full_disk(files, tmp_path, monkeypatch, capsys, error):
    out = tmp_path / "run"

    def full(*a, **k):
        raise error(out)

    monkeypatch.setattr(simfl.runner, "write_traces", full)
    assert run_star(files, out) == 2
    line = one_line(capsys)
    assert str(out) in line and "No space left on device" in line and "the disk is full" in line
    assert (out / INCOMPLETE).exists() and not (out / "summary.json").exists()


def test_summary_cannot_be_written(files, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"

    def denied(run_dir, summary):
        raise PermissionError(errno.EACCES, "Permission denied", str(Path(run_dir) / "summary.json"))

    monkeypatch.setattr(simfl.runner, "write_summary", denied)
    assert run_star(files, out) == 2
    assert one_line(capsys) == (f"simfl: error: {out / 'summary.json'}: Permission denied (permission denied: "
                                "choose a path you can write to, or change its permissions)")
    assert (out / INCOMPLETE).exists()


def test_out_of_memory(files, tmp_path, monkeypatch, capsys):
    import simfl.workloads

    def hungry(*a, **k):
        raise MemoryError

    monkeypatch.setattr(simfl.workloads, "run_synthetic", hungry)
    assert run_star(files, tmp_path / "run") == 2
    assert "error: out of memory" in one_line(capsys)
    assert (tmp_path / "run" / INCOMPLETE).exists()


def test_damaged_data_folder(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    from simfl.data import FILES

    for name in FILES.values():
        (data / name).write_bytes(b"not an IDX file")
    monkeypatch.setenv("SIMFL_CACHE", "off")
    out = str(tmp_path / "run")
    assert main(["run", *FEDAD, "--set", f'experiment.data_dir="{data}"', "--quiet", "--out", out]) == 2
    assert str(data) in one_line(capsys)


# ------------------------------------------------------------------------------------------ processes
def start_simfl(*args: str, tmp: Path, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), SIMFL_CACHE="off", TMPDIR=str(tmp))
    return subprocess.Popen([sys.executable, "-m", "simfl.cli", *args], env=env, stderr=subprocess.PIPE, **kw)


@pytest.mark.parametrize("command", [["costs"], ["run", "{sc}", "--quiet", "--out", "{out}"]])
def test_stdout_closed(files, tmp_path, command):
    """`simfl ... | head -0`: the reader has gone before simfl prints."""
    read, write = os.pipe()
    os.close(read)
    argv = [a.format(sc=files["sc"], out=tmp_path / "run") for a in command]
    p = start_simfl(*argv, tmp=tmp_path, stdout=write)
    os.close(write)
    _, err = p.communicate(timeout=120)
    err = err.decode()
    assert p.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "standard output: broken pipe" in err
    if command[0] == "run":  # the run itself finished before the printing failed
        assert (tmp_path / "run" / "summary.json").is_file() and not (tmp_path / "run" / INCOMPLETE).exists()


def _simfl_processes(tag: Path) -> list[str]:
    """Command lines of live processes that mention `tag` (the learning workers get their socket path under it)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(tag) in cmd and "simfl.learning_worker" in cmd:
            found.append(cmd)
    return found


@pytest.mark.parametrize(("sig", "status", "name", "group"), [
    (signal.SIGTERM, 143, "terminated (SIGTERM)", False),  # a supervisor stops simfl alone
    (signal.SIGINT, 130, "interrupted (SIGINT)", True),  # Ctrl-C: the terminal signals the whole process group
])
def test_signal_during_training(files, tmp_path, sig, status, name, group):
    out = tmp_path / "run"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    p = start_simfl("run", *FEDAD, "--quiet", "--out", str(out), tmp=tmp, start_new_session=True)
    # training has begun once the engine's worker pool is up: its temp folder exists and its socket is gone (the
    # listener closes it when every worker has connected)
    deadline = time.monotonic() + 120
    while not [d for d in tmp.glob("simfl-learn-*") if not (d / "sock").exists()]:
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert _simfl_processes(tmp)  # the worker runs
    (os.killpg if group else os.kill)(p.pid, sig)
    _, err = p.communicate(timeout=60)
    err = err.decode()
    assert p.returncode == status and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"simfl: {name}; {out} keeps its INCOMPLETE marker")
    assert (out / INCOMPLETE).exists() and not (out / "summary.json").exists() and not (out / LOCK).exists()
    assert not list(tmp.glob("simfl-*"))  # the engine's temp folder is gone
    time.sleep(0.2)
    assert _simfl_processes(tmp) == []  # and so are its workers
    # the next run into the folder starts from an empty folder (a quick network-only run of the same network)
    (out / "stale.png").write_text("left by the interrupted run")
    assert main(["run", *FEDAD, "--quiet", "--out", str(out), "--set", 'workload="synthetic"']) == 0
    assert not (out / "stale.png").exists() and not (out / INCOMPLETE).exists()
    assert json.loads((out / "summary.json").read_text())["workload"] == "synthetic"
