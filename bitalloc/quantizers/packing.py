"""Pack unsigned codes of 1..8 bits into one little-endian bitstream and back.

Code ``i`` of the row-major flattened input occupies bits ``[i * bits, (i + 1) * bits)`` of the stream;
stream bit ``k`` is bit ``k % 8`` (counting from the least significant) of byte ``k // 8``. The stream
takes exactly ``ceil(numel * bits / 8)`` bytes; unused high bits of the last byte are zero.
"""

from __future__ import annotations

import math

import torch

from bitalloc.errors import InvalidInput

_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes of ``numel`` codes of ``bits`` bits: ``ceil(numel * bits / 8)``."""
    _check_bits(bits)
    if numel < 0:
        raise InvalidInput(f"numel must be non-negative, got {numel}")
    return math.ceil(numel * bits / 8)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in ``[0, 2**bits)`` (any shape) into a 1-D uint8 bitstream."""
    _check_bits(bits)
    if codes.dtype not in _INTEGER_DTYPES:
        raise InvalidInput(f"codes must be an integer tensor, got {codes.dtype}")
    flat = codes.reshape(-1)  # (n,)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        raise InvalidInput(
            f"codes must lie in [0, {1 << bits}) for {bits}-bit packing, "
            f"got range [{int(flat.min())}, {int(flat.max())}]"
        )
    flat = flat.to(torch.uint8)
    nbytes = packed_nbytes(flat.numel(), bits)
    if bits == 8:
        return flat.clone()
    shifts = torch.arange(bits, dtype=torch.uint8, device=flat.device)
    stream = ((flat[:, None] >> shifts) & 1).reshape(-1)  # (n * bits,) one bit per element
    padded = torch.zeros(nbytes * 8, dtype=torch.uint8, device=flat.device)
    padded[: stream.numel()] = stream
    bit_rows = padded.view(nbytes, 8)  # (nbytes, 8) bit k of each byte in column k
    packed = bit_rows[:, 0].clone()
    for k in range(1, 8):  # loop over the 8 bit positions, not over elements
        packed |= bit_rows[:, k] << k
    return packed


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Invert ``pack_codes``: the first ``numel`` codes of the stream as a 1-D uint8 tensor."""
    expected = packed_nbytes(numel, bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise InvalidInput(
            f"packed codes must be a 1-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}"
        )
    if packed.numel() != expected:
        raise InvalidInput(
            f"{numel} codes of {bits} bits take {expected} bytes, "
            f"but the packed tensor holds {packed.numel()}"
        )
    if bits == 8:
        return packed.clone()
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    stream = ((packed[:, None] >> shifts) & 1).reshape(-1)  # (nbytes * 8,)
    code_bits = stream[: numel * bits].view(numel, bits)  # (numel, bits) bit k of each code in column k
    codes = code_bits[:, 0].clone()
    for k in range(1, bits):  # loop over bit positions, not over elements
        codes |= code_bits[:, k] << k
    return codes


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise InvalidInput(f"bits must be an integer in 1..8, got {bits!r}")
