"""`simfl export` on bad input and unwritable output: every case ends in exit status 2 and ONE line
`simfl: error: ...` that names what is wrong (the path, or the value given), with no traceback, and leaves no
output behind. Input: a small network-only run (a star of three clients and a server, gather then broadcast).
"""

from __future__ import annotations

import builtins
import errno
import os
import shutil
import stat
from pathlib import Path

import polars as pl
import pytest

import simfl.export as export_mod
from simfl.cli import main
from simfl.config import scenario_from_dict
from simfl.runner import run_scenario

SCENARIO = {
    "name": "badin", "workload": "synthetic",
    "nodes": [{"name": "s1", "kind": "switch"},
              {"name": "srv", "kind": "server", "uplink": {"to": "s1", "bandwidth": "1 Gbps", "latency": "1 ms"}}],
    "node_groups": [{"prefix": "c", "count": 3, "kind": "client",
                     "uplink": {"to": "s1", "bandwidth": "100 Mbps", "latency": "0.5 ms"}}],
    "synthetic": {"message_bytes": 3000, "pattern": ["gather", "broadcast"]},
}
# (format flags, --out name): every export format, with the kind of path it writes
FORMATS = [(["--format", "pcap"], "net.pcap"), (["--format", "pcap", "--per-link"], "pcap"),
           (["--format", "csv"], "m.csv"), (["--format", "parquet"], "m.parquet")]
FORMAT_IDS = ["pcap", "per-link", "csv", "parquet"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("badin") / "run"
    run_scenario(scenario_from_dict(SCENARIO, source="<badin>"), out, progress=False)
    return out


@pytest.fixture
def run(base_run, tmp_path) -> Path:
    """A private copy of the run, free to damage."""
    return Path(shutil.copytree(base_run, tmp_path / "run"))


def fails(argv: list[str], capsys, *named: str) -> str:
    """Run `simfl export argv`: exit 2, one line on stderr naming every string in `named`, nothing on stdout."""
    assert main(["export", *argv]) == 2
    cap = capsys.readouterr()
    err = cap.err
    assert err.startswith("simfl: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for what in named:
        assert what in err, (what, err)
    assert cap.out == ""
    return err


def files_under(d: Path) -> list[str]:
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*"))


# ---------------------------------------------------------------------------------------------- the input
def test_missing_run_folder(tmp_path, capsys):
    fails([str(tmp_path / "nope"), "--format", "pcap"], capsys, str(tmp_path / "nope"), "no such run directory")


def test_run_folder_is_a_file(tmp_path, capsys):
    f = tmp_path / "run.txt"
    f.write_text("x")
    fails([str(f), "--format", "csv"], capsys, str(f), "it is a file")


def test_incomplete_run(run, capsys):
    (run / "INCOMPLETE").write_text("")
    fails([str(run), "--format", "pcap"], capsys, str(run), "INCOMPLETE")
    assert not (run / "export").exists()


def test_run_without_messages_parquet(run, capsys):
    (run / "messages.parquet").unlink()
    fails([str(run), "--format", "parquet"], capsys, str(run), "missing messages.parquet")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_messages_parquet(run, capsys, damage):
    p = run / "messages.parquet"
    data = p.read_bytes()
    p.write_bytes({"garbage": b"PAR1 this is not parquet", "truncated": data[: len(data) // 2], "empty": b""}[damage])
    fails([str(run), "--format", "csv"], capsys, str(p), "cannot read the message trace")
    assert not (run / "export").exists()


def test_run_from_before_t_tx_asks_for_a_rerun(run, capsys, tmp_path):
    p = run / "messages.parquet"
    pl.read_parquet(p).drop("t_tx", "retransmitted_bytes").write_parquet(p)
    fails([str(run), "--format", "pcap"], capsys, str(p), "no t_tx column", "re-run")
    out = tmp_path / "old.csv"  # the table exports take any trace
    assert main(["export", str(run), "--format", "csv", "--out", str(out)]) == 0
    assert pl.read_csv(out).height == pl.read_parquet(p).height == 6


def test_null_t_tx_is_a_damaged_trace(run, capsys):
    p = run / "messages.parquet"
    df = pl.read_parquet(p)
    df.with_columns(pl.when(pl.col("msg_id") == 2).then(None).otherwise(pl.col("t_tx")).alias("t_tx")).write_parquet(p)
    fails([str(run), "--format", "pcap"], capsys, str(p), "column t_tx has 1 empty value")


@pytest.mark.parametrize("snaplen", ["-1", "0", "27", "65536", "1000000"])
def test_bad_snaplen(run, capsys, snaplen):
    fails([str(run), "--format", "pcap", "--snaplen", snaplen], capsys, f"--snaplen {snaplen}:", "28", "65535")
    assert not (run / "export").exists()


def test_snaplen_that_is_not_a_number(run, capsys):
    assert main(["export", str(run), "--format", "pcap", "--snaplen", "64k"]) == 2  # argparse's own check
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument --snaplen: invalid int value: '64k'" in err and "Traceback" not in err


@pytest.mark.parametrize("fmt", ["pcapng", "PCAP", "json", ""])
def test_bad_format(run, capsys, fmt):
    fails([str(run), "--format", fmt], capsys, f"unknown export format {fmt!r}", "pcap, csv, parquet")
    assert not (run / "export").exists()


# ---------------------------------------------------------------------------------------------- the output
@pytest.mark.parametrize("flags,name", FORMATS, ids=FORMAT_IDS)
def test_out_under_a_file(run, tmp_path, capsys, flags, name):
    f = tmp_path / "plain.txt"
    f.write_text("keep")
    out = f / "sub" / name
    fails([str(run), *flags, "--out", str(out)], capsys, str(out), f"{f} is a file")
    assert f.read_text() == "keep"


@pytest.mark.parametrize("flags,name", FORMATS, ids=FORMAT_IDS)
def test_existing_output_without_force(run, tmp_path, capsys, flags, name):
    out = tmp_path / name
    if name == "pcap":
        out.mkdir()
        (out / "old.pcap").write_text("keep")
    else:
        out.write_text("keep")
    fails([str(run), *flags, "--out", str(out)], capsys, str(out), "already exists; use --force")
    assert (out / "old.pcap" if name == "pcap" else out).read_text() == "keep"


@pytest.mark.parametrize("flags,out_is", [(["--format", "pcap"], "dir"), (["--format", "csv"], "dir"),
                                          (["--format", "pcap", "--per-link"], "file")])
def test_out_of_the_wrong_kind(run, tmp_path, capsys, flags, out_is):
    out = tmp_path / "o"
    out.mkdir() if out_is == "dir" else out.write_text("keep")
    fails([str(run), *flags, "--out", str(out)], capsys, str(out), "directory")


def _refuse_writes_under(monkeypatch, d: Path) -> None:
    """Where permission bits do not bind (root), answer writes under `d` as the kernel answers them for a
    read-only directory: EACCES on open."""
    real = builtins.open

    def guarded(file, mode="r", *args, **kw):
        if any(c in mode for c in "wax+") and Path(file).resolve().is_relative_to(d.resolve()):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real(file, mode, *args, **kw)

    monkeypatch.setattr(export_mod, "open", guarded, raising=False)


def export_into_read_only(run_dir, tmp_path, capsys, monkeypatch, flags, name) -> None:
    """Exporting `run_dir` into a read-only folder: one line naming the path, and nothing left behind there."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root
            _refuse_writes_under(monkeypatch, ro)
        out = ro / name
        fails([str(run_dir), *flags, "--out", str(out)], capsys, str(out), "permission denied")
        assert [p for p in files_under(ro) if not p.startswith("pcap")] == []
        assert [p for p in files_under(ro) if p.endswith(".pcap") or "tmp" in p] == []
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("flags,name", FORMATS, ids=FORMAT_IDS)
def test_read_only_out(run, tmp_path, capsys, monkeypatch, flags, name):
    export_into_read_only(run, tmp_path, capsys, monkeypatch, flags, name)


class _FullDisk:
    """A file whose every write fails as on a full disk."""

    def __init__(self, f) -> None:
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("flags,name", FORMATS, ids=FORMAT_IDS)
def test_full_disk(run, tmp_path, capsys, monkeypatch, flags, name):
    real = builtins.open
    monkeypatch.setattr(export_mod, "open", lambda *a, **kw: _FullDisk(real(*a, **kw)), raising=False)
    out = tmp_path / "o" / name
    fails([str(run), *flags, "--out", str(out)], capsys, str(out), "no space left on the device")
    assert [p for p in files_under(tmp_path / "o") if p.endswith((".pcap", ".csv", ".parquet", ".hosts"))
            or "tmp" in p] == []  # the half-written temporary file is gone


def test_out_is_the_runs_own_trace(run, capsys):
    fails([str(run), "--format", "parquet", "--out", str(run / "messages.parquet")], capsys,
          str(run / "messages.parquet"), "run's own")
    assert pl.read_parquet(run / "messages.parquet").height == 6


# ---------------------------------------------------------------------------------------------- imperfect runs
# A run with everything the imperfect-network keys put in a trace: lost messages (c2's link down for good, given up
# on after 1 s), retransmissions (5% loss per client link: 14 packets over two such hops are charged 2), messages
# rerouted around an outage (the direct c0-c1 link, the shortest route, is down for the first second: c0 <-> c1 go
# through s1) and background frames. All-pairs among c0 .. c2 of 20,000-byte messages; no drawn timeouts (a lost
# SYN's 1 s would let c0 <-> c1 start after the outage, on the direct link).
IMPERFECT = {
    **SCENARIO,
    "synthetic": {"message_bytes": 20000, "pattern": ["allpairs"]},
    "network": {"give_up": "1 s", "loss_timeouts": False},
    "node_groups": [{"prefix": "c", "count": 3, "kind": "client",
                     "uplink": {"to": "s1", "bandwidth": "100 Mbps", "latency": "0.5 ms", "loss": 0.05}}],
    "links": [{"a": "c0", "b": "c1", "bandwidth": "100 Mbps", "latency": "0.1 ms"}],
    "faults": [{"link": "c2-s1", "down": "0 s"}, {"link": "c0-c1", "down": "0 s", "up": "1 s"}],
    "traffic": [{"name": "cam", "src": "c0", "dst": "srv", "kind": "bulk", "bytes": "100 kB"},
                {"name": "ctl", "src": "srv", "dst": "c1", "kind": "periodic", "bytes": 100, "period": "10 ms",
                 "stop": "50 ms", "priority": "control"}],
}


@pytest.fixture(scope="module")
def imperfect_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imperfect") / "run"
    run_scenario(scenario_from_dict(IMPERFECT, source="<imperfect>"), out, progress=False)
    return out


def test_the_imperfect_run_has_what_it_is_for(imperfect_run):
    m = pl.read_parquet(imperfect_run / "messages.parquet")
    lost = m.filter(pl.col("status") == "lost")
    # c2's four messages are lost; c0 -> c1 and c1 -> c0 arrive, through s1, with 2 packets of 1,538 bytes again
    assert sorted(lost.select("src", "dst").rows()) == [("c0", "c2"), ("c1", "c2"), ("c2", "c0"), ("c2", "c1")]
    ok = m.filter(pl.col("status") == "delivered")
    assert sorted(ok.select("src", "dst").rows()) == [("c0", "c1"), ("c1", "c0")]
    assert ok["hops"].to_list() == [2, 2] and ok["retransmitted_bytes"].to_list() == [2 * 1538, 2 * 1538]
    assert pl.read_parquet(imperfect_run / "background.parquet").height > 0


@pytest.mark.parametrize("flags,name", FORMATS, ids=FORMAT_IDS)
def test_imperfect_run_into_a_read_only_folder(imperfect_run, tmp_path, capsys, monkeypatch, flags, name):
    export_into_read_only(imperfect_run, tmp_path, capsys, monkeypatch, flags, name)


@pytest.mark.parametrize("kind", ["fifo", "symlink", "device"])
@pytest.mark.parametrize("flags", [["--format", "pcap"], ["--format", "csv"]], ids=["pcap", "csv"])
def test_out_that_is_not_a_regular_file_is_kept(imperfect_run, tmp_path, capsys, kind, flags):
    """With --force the export used to rename its file over whatever was there: a pipe, a link such as /dev/stdout
    (replaced by a file, as root), a device such as /dev/null."""
    out = tmp_path / kind
    if kind == "fifo":
        os.mkfifo(out)
    elif kind == "symlink":
        (tmp_path / "target").write_text("keep")
        out.symlink_to(tmp_path / "target")
    else:
        try:
            os.mknod(out, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # as /dev/null
        except PermissionError:
            pytest.skip("creating a device needs root")
    before = os.lstat(out)
    fails([str(imperfect_run), *flags, "--out", str(out), "--force"], capsys, str(out), "is not a regular file")
    after = os.lstat(out)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)


def test_pcap_of_an_imperfect_run(imperfect_run, tmp_path, capsys):
    """Each delivered message once, its packets without the retransmissions (the trace's wire_bytes less
    retransmitted_bytes); no lost message, no background frame; the rerouted messages on the links they took."""
    m = pl.read_parquet(imperfect_run / "messages.parquet").filter(pl.col("status") == "delivered")
    assert main(["export", str(imperfect_run), "--format", "pcap", "--out", str(tmp_path / "n.pcap")]) == 0
    sent = int((m["wire_bytes"] - m["retransmitted_bytes"]).sum())
    assert f"wrote {int(m['n_packets'].sum())} packet records ({sent:,} wire bytes)" in capsys.readouterr().out
    assert main(["export", str(imperfect_run), "--format", "pcap", "--per-link", "--out", str(tmp_path / "pl")]) == 0
    index = pl.read_csv(tmp_path / "pl" / "index.csv")
    # the direct link was down: nothing on it; each message's 14 packets on c0 -> s1 -> c1 (or back)
    per_file = dict(zip(index["file"], index["packets"]))
    assert per_file.pop("c0-c1.c0.pcap") == per_file.pop("c0-c1.c1.pcap") == 0
    assert {f: n for f, n in per_file.items() if n} == {"c0-s1.c0.pcap": 14, "c0-s1.s1.pcap": 14,
                                                         "c1-s1.c1.pcap": 14, "c1-s1.s1.pcap": 14}


def test_per_link_pcap_of_a_cell_with_a_channel_per_direction(tmp_path, capsys):
    """Its two channels were both named <cell>.pcap, and the export stopped on "clashing per-link file names".
    Two stations of one FDD cell exchange a 3,000-byte message each way (3 packets): each message crosses the up
    channel once and the down channel once, so each channel's file holds 6 records."""
    sc = {"name": "fdd", "workload": "synthetic",
          "nodes": [{"name": "ap1", "kind": "ap"}, {"name": "w0", "kind": "client", "cell": "w"},
                    {"name": "w1", "kind": "client", "cell": "w"}],
          "cells": [{"name": "w", "ap": "ap1", "bandwidth_up": "10 Mbps", "bandwidth_down": "20 Mbps"}],
          "synthetic": {"message_bytes": 3000, "pattern": ["allpairs"]}}
    run = tmp_path / "run"
    run_scenario(scenario_from_dict(sc, source="<fdd>"), run, progress=False)
    assert main(["export", str(run), "--format", "pcap", "--per-link"]) == 0, capsys.readouterr().err
    index = pl.read_csv(run / "export" / "pcap" / "index.csv")
    assert dict(zip(index["file"], index["packets"])) == {"w.up.pcap": 6, "w.down.pcap": 6}
    assert sorted(p.name for p in (run / "export" / "pcap").iterdir()) == ["hosts", "index.csv", "w.down.pcap",
                                                                          "w.up.pcap"]
