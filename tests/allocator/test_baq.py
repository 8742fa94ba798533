"""BAQ closed-form continuous bits: the water-filling law and the rounding."""

from __future__ import annotations

import numpy as np

from bitalloc.allocator.baq import continuous_bits, round_to_palette
from tests.allocator.test_problem import make


def test_continuous_bits_follow_half_a_bit_per_factor_of_two_in_sensitivity():
    bits = np.array([2.0, 4.0, 8.0])
    a = np.array([1.0, 4.0])  # unit 1 is four times as sensitive: one more bit
    loss = a[:, None] * 2.0 ** (-2 * bits[None, :])
    p = make(loss, nbytes=np.broadcast_to(bits, (2, 3)))  # 8 weights each: bytes == bits
    real = continuous_bits(p.merged(), total_bytes=9.0)  # 72 bits over 16 weights: 4.5 bits average
    assert np.allclose(real, [4.0, 5.0]) and np.isclose((8 * real).sum(), 72.0)
    assert round_to_palette(p.merged(), real).tolist() == [1, 1]
    assert round_to_palette(p.merged(), np.array([1.0, 9.0])).tolist() == [0, 2]
