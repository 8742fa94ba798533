"""Candidate names: foundation names unchanged, new kinds and suffixes round-trip, bad combos refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bitalloc.errors import InvalidInput
from bitalloc.quantizers.candidate import Candidate, QuantKind, default_palette, parse_palette


def test_foundation_names_are_unchanged() -> None:
    for c in default_palette():
        assert c.name == f"{c.kind.value}-w{c.bits}g{c.group_size}-{'sym' if c.symmetric else 'asym'}"
        assert Candidate.parse(c.name) == c and c.foundation_format
    assert Candidate.parse("gptq-w3g64-sym") == Candidate(QuantKind.GPTQ, 3, 64, True)


@given(
    kind=st.sampled_from([QuantKind.RTN, QuantKind.GPTQ, QuantKind.GPTQACT]),
    bits=st.integers(1, 8),
    group=st.sampled_from([16, 32, 64, 192]),
    sym=st.booleans(),
    outliers=st.integers(0, 64),
)
def test_outlier_names_round_trip(kind, bits, group, sym, outliers) -> None:
    c = Candidate(kind, bits, group, sym, outliers)
    assert Candidate.parse(c.name) == c
    assert c.foundation_format == (kind in (QuantKind.RTN, QuantKind.GPTQ) and outliers == 0)
    assert ("-o" in c.name) == (outliers > 0)


@pytest.mark.parametrize(
    "name",
    [
        "awq-w4g64-asym",
        "kmeans-w3g192-asym",
        "lutgptq-w3g64-asym",
        "nest-w2g64-sym",
        "mix-w3g64-asym-h25",
        "tern-w1g192-sym",
    ],
)
def test_new_kinds_round_trip(name: str) -> None:
    assert Candidate.parse(name).name == name and not Candidate.parse(name).foundation_format


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("kmeans-w3g64-asym-o8", "keep no outliers"),
        ("kmeans-w3g64-sym", "asym"),
        ("mix-w3g64-asym", "high_percent"),
        ("rtn-w3g64-asym-h50", "high_percent"),
        ("mix-w8g64-asym-h50", "at most 7"),
        ("foo-w3g64-asym", "unknown quantizer"),
        ("rtn-w3g64-asym-o0", "not a candidate name"),
    ],
)
def test_bad_names_are_refused(name: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        Candidate.parse(name)


def test_palette_spec_expands_default_and_names_a_bad_entry() -> None:
    palette = parse_palette("default, lutgptq-w3g192-asym,rtn-w4g32-asym")
    assert palette[: len(default_palette())] == default_palette()
    assert palette[-1] == Candidate.parse("lutgptq-w3g192-asym")  # the duplicate rtn entry dropped
    assert len(palette) == len(default_palette()) + 1
    with pytest.raises(InvalidInput, match=r"palette entry 'lutgptq-w9g64-asym': bits must be in 1..8"):
        parse_palette("default,lutgptq-w9g64-asym")
    with pytest.raises(InvalidInput, match="the palette is empty"):
        parse_palette(" , ")
