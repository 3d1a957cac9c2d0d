from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simfl.units import (
    UnitError,
    format_flops,
    format_rate,
    format_size,
    format_time,
    parse_flops,
    parse_rate,
    parse_size,
    parse_time,
)


@pytest.mark.parametrize("text, value", [
    ("100 Mbps", 100e6), ("1 Gbit/s", 1e9), ("54 Mbps", 54e6), ("54Mbps", 54e6), ("1.5 Gbps", 1.5e9),
    ("250 kbps", 250e3), ("12.5 MB/s", 100e6), (" 10 bps ", 10.0), (1e6, 1e6), (300, 300.0), ("-5 Mbps", -5e6),
])
def test_rates(text, value):
    assert parse_rate(text) == pytest.approx(value, rel=1e-15)


@pytest.mark.parametrize("text, value", [
    ("2 ms", 0.002), ("250 us", 250e-6), ("250 µs", 250e-6), ("1.5 s", 1.5), ("0 s", 0.0), ("30 ns", 30e-9),
    (0.25, 0.25),
])
def test_times(text, value):
    assert parse_time(text) == pytest.approx(value, rel=1e-15)


@pytest.mark.parametrize("text, value", [
    ("5 GFLOP/s", 5e9), ("10 GFLOPS", 1e10), ("1 TFLOP/s", 1e12), ("900 MFLOP/s", 9e8),
])
def test_flops(text, value):
    assert parse_flops(text) == pytest.approx(value, rel=1e-15)


@pytest.mark.parametrize("text, value", [
    ("12868 B", 12868), ("12,868 B", 12868), ("12 kB", 12000), ("1 MiB", 1048576), ("2 MB", 2e6), (12868, 12868),
    ("16 bit", 2),
])
def test_sizes(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["100 Mbs", "fast", "100", "", "1..2 Mbps", "10 ms/s", True, None, [1], "nan bps"])
def test_bad_rates(bad):
    with pytest.raises(UnitError):
        parse_rate(bad)


def test_unknown_unit_lists_the_known_ones():
    with pytest.raises(UnitError, match=r"unknown unit 'Mbs'.*Mbps"):
        parse_rate("5 Mbs")
    with pytest.raises(UnitError, match="unknown unit 'mins'"):
        parse_time("2 mins")


def test_format_examples():
    assert format_rate(100e6) == "100 Mbps"
    assert format_rate(1e9) == "1 Gbps"
    assert format_time(0.5e-3) == "500 us"
    assert format_time(0.002) == "2 ms"
    assert format_flops(1e10) == "10 GFLOP/s"
    assert format_size(12868) == "12868 B"


@given(st.floats(min_value=1e-9, max_value=1e15, allow_nan=False, allow_infinity=False))
def test_format_round_trips_exactly(x):
    assert parse_rate(format_rate(x)) == x
    assert parse_time(format_time(x)) == x
    assert parse_flops(format_flops(x)) == x


def test_peta_and_exa_units_at_the_schema_bounds():
    assert parse_rate("1 Pbps") == parse_rate("1 Pbit/s") == 1e15 and format_rate(1e15) == "1 Pbps"
    assert parse_flops("1 EFLOP/s") == 1e18 and format_flops(1e18) == "1 EFLOP/s"
    assert parse_size("1 TiB") == 2**40 and format_size(2**40) == "1 TiB"
    assert format_rate(1.0) == "1 bps" and format_flops(1e3) == "1 kFLOP/s" and format_time(3600.0) == "3600 s"


@pytest.mark.parametrize("size, text", [(0, "0 B"), (12868, "12868 B"), (12000, "12 kB"), (2_000_000, "2 MB"),
                                        (1024, "1 KiB"), (3 * 2**20, "3 MiB"), (5 * 10**12, "5 TB"), (1.5, "1.5")])
def test_format_size_uses_the_largest_exact_unit(size, text):
    assert format_size(size) == text


@given(st.integers(min_value=0, max_value=2**40))
def test_format_size_round_trips_exactly(n):
    assert parse_size(format_size(n)) == n


@pytest.mark.parametrize("text", ["1e400 bps", "-1e400 s"])
def test_overflowing_numbers_are_not_finite(text):
    with pytest.raises(UnitError, match="not a finite"):
        (parse_rate if "bps" in text else parse_time)(text)
