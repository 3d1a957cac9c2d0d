"""Quantities as people write them ("100 Mbps", "2 ms", "5 GFLOP/s", "12 kB") -> SI floats.

Every parser takes a string with a number and a unit, or a bare number (int/float) that is already in the SI base unit
(bit/s, s, FLOP/s, bytes). Prefixes are decimal (k = 1e3, M = 1e6, G = 1e9, T = 1e12, P = 1e15, E = 1e18); only
sizes also know the binary KiB/MiB/GiB/TiB. Rates in bytes per second ("12.5 MB/s") are converted to bits (x 8).
Numbers may carry underscores or comma thousands separators ("12,868 B"). Anything else raises `UnitError` with
the list of known units.

The `format_*` functions write a value back in the largest unit that represents it exactly (used by the resolved
`scenario.toml`), so that `parse_x(format_x(v)) == v` for every finite value.
"""

from __future__ import annotations

import math
import re

from simfl.errors import SimflError

__all__ = [
    "UnitError",
    "parse_rate",
    "parse_time",
    "parse_flops",
    "parse_size",
    "format_rate",
    "format_time",
    "format_flops",
    "format_size",
]


class UnitError(SimflError, ValueError):
    """A quantity that cannot be parsed (bad number or unknown unit)."""


_RATE = {
    "bps": 1.0, "bit/s": 1.0, "b/s": 1.0,
    "kbps": 1e3, "Kbps": 1e3, "kbit/s": 1e3, "Kbit/s": 1e3, "kb/s": 1e3,
    "Mbps": 1e6, "Mbit/s": 1e6, "Mb/s": 1e6,
    "Gbps": 1e9, "Gbit/s": 1e9, "Gb/s": 1e9,
    "Tbps": 1e12, "Tbit/s": 1e12, "Tb/s": 1e12,
    "Pbps": 1e15, "Pbit/s": 1e15, "Pb/s": 1e15,
    "B/s": 8.0, "Bps": 8.0,
    "kB/s": 8e3, "KB/s": 8e3, "kBps": 8e3, "KBps": 8e3,
    "MB/s": 8e6, "MBps": 8e6,
    "GB/s": 8e9, "GBps": 8e9,
}
_TIME = {
    "s": 1.0, "sec": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ns": 1e-9, "min": 60.0,
}
_FLOPS = {
    "FLOP/s": 1.0, "FLOPS": 1.0, "flop/s": 1.0,
    "kFLOP/s": 1e3, "KFLOP/s": 1e3, "kFLOPS": 1e3, "KFLOPS": 1e3,
    "MFLOP/s": 1e6, "MFLOPS": 1e6,
    "GFLOP/s": 1e9, "GFLOPS": 1e9,
    "TFLOP/s": 1e12, "TFLOPS": 1e12,
    "PFLOP/s": 1e15, "PFLOPS": 1e15,
    "EFLOP/s": 1e18, "EFLOPS": 1e18,
}
_SIZE = {
    "B": 1.0, "byte": 1.0, "bytes": 1.0,
    "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
    "KiB": 1024.0, "MiB": 1024.0**2, "GiB": 1024.0**3, "TiB": 1024.0**4,
    "bit": 1 / 8, "bits": 1 / 8,
}

_NUM = r"[+-]?(?:\d{1,3}(?:,\d{3})+|[\d_]*\.?[\d_]+)(?:[eE][+-]?\d+)?"
_QTY = re.compile(rf"^\s*({_NUM})\s*([^\s\d].*?)?\s*$")


def _parse(value: object, table: dict[str, float], what: str, base: str) -> float:
    if isinstance(value, bool):
        raise UnitError(f"expected a {what} such as {_example(what)}, got a boolean")
    if isinstance(value, int | float):
        x = float(value)
    elif isinstance(value, str):
        m = _QTY.match(value)
        if not m:
            raise UnitError(f"cannot read {value!r} as a {what} (write it like {_example(what)})")
        num, unit = m.group(1), (m.group(2) or "")
        try:
            x = float(num.replace(",", "").replace("_", ""))
        except ValueError:
            raise UnitError(f"cannot read the number in {value!r}") from None
        if unit:
            if unit not in table:
                raise UnitError(f"unknown unit {unit!r} for a {what} (known: {', '.join(table)})")
            x *= table[unit]
        else:
            raise UnitError(f"{value!r} has no unit; write it like {_example(what)} or give a bare number in {base}")
    else:
        raise UnitError(f"expected a {what} such as {_example(what)}, got {type(value).__name__}")
    if math.isnan(x) or math.isinf(x):
        raise UnitError(f"{value!r} is not a finite {what}")
    return x


def _example(what: str) -> str:
    return {"rate": '"100 Mbps"', "time": '"2 ms"', "compute speed": '"10 GFLOP/s"', "size": '"12 kB"'}[what]


def parse_rate(s: str | float) -> float:
    """A data rate in bit/s: "100 Mbps", "1 Gbit/s", "54 Mbps", "12.5 MB/s" (bytes, x 8)."""
    return _parse(s, _RATE, "rate", "bit/s")


def parse_time(s: str | float) -> float:
    """A duration in seconds: "2 ms", "250 us", "1.5 s"."""
    return _parse(s, _TIME, "time", "seconds")


def parse_flops(s: str | float) -> float:
    """A compute speed in FLOP/s: "5 GFLOP/s", "1 TFLOPS"."""
    return _parse(s, _FLOPS, "compute speed", "FLOP/s")


def parse_size(s: str | int | float) -> float:
    """A size in bytes: "12868 B", "12 kB", "1 MiB"."""
    return _parse(s, _SIZE, "size", "bytes")


def _format(x: float, units: list[tuple[str, float]], parse) -> str:
    for name, scale in units:
        if abs(x) >= scale or scale == units[-1][1]:
            v = x / scale
            text = f"{v:.15g}"
            candidate = f"{text} {name}"
            try:
                if parse(candidate) == x:
                    return candidate
            except UnitError:
                pass
    base = next(name for name, scale in units if scale == 1.0)
    return f"{float(x)!r} {base}"  # the base unit: repr() round-trips exactly


def format_rate(bps: float) -> str:
    return _format(bps, [("Pbps", 1e15), ("Tbps", 1e12), ("Gbps", 1e9), ("Mbps", 1e6), ("kbps", 1e3), ("bps", 1.0)],
                   parse_rate)


def format_time(s: float) -> str:
    if s == 0:
        return "0 s"
    return _format(s, [("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)], parse_time)


def format_flops(f: float) -> str:
    return _format(f, [("EFLOP/s", 1e18), ("PFLOP/s", 1e15), ("TFLOP/s", 1e12), ("GFLOP/s", 1e9), ("MFLOP/s", 1e6),
                       ("kFLOP/s", 1e3), ("FLOP/s", 1.0)], parse_flops)


def format_size(b: float) -> str:
    """Whole multiples of a decimal or binary unit in that unit ("12 kB", "1 TiB"), other sizes in bytes."""
    if not float(b).is_integer():
        return repr(float(b))
    n = int(b)
    for name, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3), ("TiB", 2**40),
                        ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n and n % scale == 0:
            return f"{n // scale} {name}"
    return f"{n} B"
