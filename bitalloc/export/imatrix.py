"""llama.cpp importance matrices from bitalloc's calibration statistics (the legacy ``imatrix.dat`` format).

llama-quantize weights each column's rounding error by the mean squared activation of that input
column. bitalloc's statistics already hold it: the diagonal of ``H = XᵀX / n_tokens``. The file is
little-endian: ``int32 n_entries``; per entry ``int32 len, name, int32 ncall, int32 nval,
float32[nval]``; then ``int32 chunk count`` and ``int32 len, dataset name``. Values are stored as
``mean * ncall`` (llama-quantize divides by ``ncall`` on load), with ``ncall`` the number of
calibration chunks (windows) and names the GGUF tensor names.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from bitalloc.errors import InvalidInput
from bitalloc.export.gguf_names import unit_gguf_name
from bitalloc.sensitivity.calibrate import CalibrationStats


@dataclass(frozen=True, eq=False)
class ImatrixEntry:
    """One tensor's mean squared input activations (``nval``,) float32 and its call count."""

    ncall: int
    values: np.ndarray


def imatrix_from_stats(stats: CalibrationStats, units: list[str], *, seq_len: int) -> dict[str, ImatrixEntry]:
    """GGUF tensor name -> entry for every unit: ``diag(H)``, one call per ``seq_len``-token chunk."""
    ncall = max(1, stats.n_tokens // seq_len)
    out = {}
    for unit in units:
        if unit not in stats.hessians:
            raise InvalidInput(f"calibration statistics hold no Hessian for unit {unit!r}; re-calibrate")
        diag = stats.hessians[unit].diagonal().float().cpu().numpy()  # (in,) mean x^2 per column
        out[unit_gguf_name(unit)] = ImatrixEntry(ncall, diag.astype(np.float32))
    return out


def encode_imatrix(entries: dict[str, ImatrixEntry], *, chunks: int, dataset: str) -> bytes:
    """The ``imatrix.dat`` bytes of ``entries``."""
    parts = [struct.pack("<i", len(entries))]
    for name, entry in entries.items():
        raw = name.encode()
        stored = (entry.values.astype(np.float64) * entry.ncall).astype("<f4")
        parts += [
            struct.pack("<i", len(raw)),
            raw,
            struct.pack("<ii", entry.ncall, stored.size),
            stored.tobytes(),
        ]
    raw = dataset.encode()
    parts += [struct.pack("<i", chunks), struct.pack("<i", len(raw)), raw]
    return b"".join(parts)


def decode_imatrix(data: bytes) -> tuple[dict[str, ImatrixEntry], int, str]:
    """Read ``imatrix.dat`` bytes as llama-quantize does: (entries with values / ncall, chunks, dataset)."""
    try:
        (n,), pos = struct.unpack_from("<i", data), 4
        entries = {}
        for _ in range(n):
            (length,) = struct.unpack_from("<i", data, pos)
            name = data[pos + 4 : pos + 4 + length].decode()
            pos += 4 + length
            ncall, nval = struct.unpack_from("<ii", data, pos)
            values = np.frombuffer(data, "<f4", nval, pos + 8).astype(np.float32)
            pos += 8 + 4 * nval
            entries[name] = ImatrixEntry(ncall, values / max(ncall, 1))
        chunks, length = struct.unpack_from("<ii", data, pos)
        dataset = data[pos + 8 : pos + 8 + length].decode()
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"not an imatrix.dat file: {exc}") from None
    return entries, chunks, dataset
