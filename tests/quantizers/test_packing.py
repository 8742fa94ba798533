"""Bit packing: exact size, little-endian stream layout, round trips, input validation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitalloc.errors import InvalidInput
from bitalloc.quantizers.packing import pack_codes, packed_nbytes, unpack_codes


def _reference_stream(codes: list[int], bits: int) -> bytes:
    """The format by definition: code i at bits [i*bits, (i+1)*bits) of one little-endian integer."""
    value = sum(c << (i * bits) for i, c in enumerate(codes))
    return value.to_bytes(math.ceil(len(codes) * bits / 8), "little")


@st.composite
def _codes(draw: st.DrawFn) -> tuple[list[int], int]:
    bits = draw(st.integers(1, 8))
    codes = draw(st.lists(st.integers(0, 2**bits - 1), max_size=200))
    return codes, bits


@settings(max_examples=200, deadline=None)
@given(_codes())
def test_pack_matches_reference_and_round_trips(case: tuple[list[int], int]) -> None:
    codes, bits = case
    tensor = torch.tensor(codes, dtype=torch.int64)
    packed = pack_codes(tensor, bits)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == math.ceil(len(codes) * bits / 8) == packed_nbytes(len(codes), bits)
    assert bytes(packed.tolist()) == _reference_stream(codes, bits)
    unpacked = unpack_codes(packed, bits, len(codes))
    assert unpacked.dtype == torch.uint8
    assert unpacked.tolist() == codes


@pytest.mark.parametrize("bits", range(1, 9))
def test_large_random_round_trip_is_row_major(bits: int) -> None:
    gen = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (37, 129), generator=gen, dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.numel() == math.ceil(codes.numel() * bits / 8)
    assert torch.equal(unpack_codes(packed, bits, codes.numel()), codes.reshape(-1))
    assert torch.equal(packed, pack_codes(codes.reshape(-1).to(torch.int32), bits))


def test_known_layout() -> None:
    # 4-bit codes 1, 2, 3: byte 0 = 0x21 (code 0 in the low nibble), byte 1 = 0x03.
    assert pack_codes(torch.tensor([1, 2, 3]), 4).tolist() == [0x21, 0x03]
    # 3-bit codes 7, 0, 5: bits 111 000 101 -> 0b01000111, 0b1
    assert pack_codes(torch.tensor([7, 0, 5]), 3).tolist() == [0b01000111, 0b1]


@pytest.mark.parametrize(
    ("codes", "bits"),
    [
        (torch.tensor([0, 4]), 2),
        (torch.tensor([-1, 0]), 3),
        (torch.tensor([256]), 8),
        (torch.tensor([0.0, 1.0]), 4),
    ],
)
def test_invalid_codes_raise(codes: torch.Tensor, bits: int) -> None:
    with pytest.raises(InvalidInput):
        pack_codes(codes, bits)


@pytest.mark.parametrize("bits", [0, 9])
def test_invalid_bits_raise(bits: int) -> None:
    with pytest.raises(InvalidInput, match="bits"):
        pack_codes(torch.tensor([0]), bits)


def test_unpack_rejects_wrong_size_or_dtype() -> None:
    packed = pack_codes(torch.tensor([1, 2, 3]), 4)
    with pytest.raises(InvalidInput, match="bytes"):
        unpack_codes(packed, 4, 5)
    with pytest.raises(InvalidInput, match="uint8"):
        unpack_codes(packed.to(torch.int16), 4, 3)
