"""Per-group quantization grids as pure functions, shared by RTN and GPTQ.

Every grid is one affine map per row of a ``(rows, group)`` slice, held in float32 but with scale and
offset exactly representable in float16 (the stored format, see ``candidate.py``):

- asymmetric: ``scale = (max - min) / (2**bits - 1)`` and ``min`` rounded to float16 first, then
  ``q = clamp(round((w - min) / scale), 0, 2**bits - 1)`` and ``w ≈ scale * q + min``. Weights that already
  lie on such a grid (llama.cpp Q4_1 blocks) come back bit for bit.
- symmetric: ``e`` is the value of largest magnitude (sign kept), ``scale = -e / 2**(bits-1)`` in float16 so
  that ``e`` lands exactly on the most negative level; ``q = clamp(round(w / scale), -2**(bits-1),
  2**(bits-1) - 1) + 2**(bits-1)`` stored unsigned and ``w ≈ scale * (q - 2**(bits-1))``.

Both are one formula with a per-row zero point ``z`` (0 asymmetric, ``2**(bits-1)`` symmetric) and offset
``o`` (``min`` asymmetric, 0 symmetric): ``q = clamp(round((w - o) / scale) + z, 0, maxq)`` and
``w ≈ scale * (q - z) + o``. Rows may mix bit widths and symmetry (GPTQ stacks candidates).
A group whose scale would be zero (constant or all-zero groups, or float16 underflow) uses scale 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bitalloc.errors import InvalidInput

_FP16_MAX = float(torch.finfo(torch.float16).max)


@dataclass(frozen=True, eq=False)
class GroupGrid:
    """Per-row affine grid of one group: every field is a float32 ``(rows,)`` tensor."""

    scale: torch.Tensor  # (rows,) float16-representable, never 0
    offset: torch.Tensor  # (rows,) float16-representable min (asym) or 0 (sym)
    zero: torch.Tensor  # (rows,) 0 (asym) or 2**(bits-1) (sym)
    maxq: torch.Tensor  # (rows,) 2**bits - 1

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        """Codes in ``[0, maxq]`` as float32, same shape as ``w`` (``(rows,)`` or ``(rows, k)``)."""
        scale, offset, zero, maxq = (_per_row(p, w) for p in (self.scale, self.offset, self.zero, self.maxq))
        q = (w - offset).div_(scale).round_().add_(zero)
        return q.clamp_(max=maxq).clamp_(min=0)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        """Weights ``scale * (q - zero) + offset`` in float32, same shape as ``q``."""
        scale, offset, zero = (_per_row(p, q) for p in (self.scale, self.offset, self.zero))
        return (q - zero).mul_(scale).add_(offset)

    def fake_quantize(self, w: torch.Tensor) -> torch.Tensor:
        """``dequantize(quantize(w))``: the nearest grid point of every weight."""
        return self.dequantize(self.quantize(w))


def asymmetric_params(w: torch.Tensor, bits: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and min of each row of a ``(rows, g)`` slice: two float32 ``(rows,)``, float16-representable."""
    return _asymmetric(w.float(), _maxq(bits, w))


def symmetric_scale(w: torch.Tensor, bits: int | torch.Tensor) -> torch.Tensor:
    """Scale ``-e / 2**(bits-1)`` per row of a ``(rows, g)`` slice: float32 ``(rows,)``, may be negative."""
    return _symmetric(w.float(), _maxq(bits, w))


def group_grid(w: torch.Tensor, bits: int | torch.Tensor, symmetric: bool | torch.Tensor) -> GroupGrid:
    """The grid of each row of a ``(rows, g)`` slice; ``bits``/``symmetric`` are scalars or ``(rows,)``."""
    if w.dim() != 2:
        raise InvalidInput(f"group slices must be (rows, group), got shape {tuple(w.shape)}")
    w = w.float()
    rows = w.shape[0]
    maxq = _maxq(bits, w).expand(rows).contiguous()  # (rows,)
    half = (maxq + 1) / 2  # (rows,) 2**(bits-1)
    zeros = torch.zeros_like(maxq)
    if isinstance(symmetric, bool):
        if symmetric:
            return GroupGrid(_symmetric(w, maxq), zeros, half, maxq)
        scale, low = _asymmetric(w, maxq)
        return GroupGrid(scale, low, zeros, maxq)
    sym = symmetric.to(device=w.device, dtype=torch.bool).expand(rows)  # (rows,)
    a_scale, a_low = _asymmetric(w, maxq)
    return GroupGrid(
        scale=torch.where(sym, _symmetric(w, maxq), a_scale),
        offset=torch.where(sym, zeros, a_low),
        zero=torch.where(sym, half, zeros),
        maxq=maxq,
    )


def _asymmetric(w: torch.Tensor, maxq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lo = w.amin(dim=-1)  # (rows,)
    hi = w.amax(dim=-1)  # (rows,)
    scale = _to_fp16_grid((hi - lo) / maxq)  # (rows,)
    return _nonzero(scale), _to_fp16_grid(lo)


def _symmetric(w: torch.Tensor, maxq: torch.Tensor) -> torch.Tensor:
    half = (maxq + 1) / 2  # 2**(bits-1)
    idx = w.abs().argmax(dim=-1, keepdim=True)  # (rows, 1)
    extreme = w.gather(-1, idx).squeeze(-1)  # (rows,) signed value of largest magnitude
    return _nonzero(_to_fp16_grid(-extreme / half))


def _maxq(bits: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``2**bits - 1`` as float32 on ``like``'s device: a scalar tensor, or ``(rows,)`` for per-row bits."""
    if isinstance(bits, torch.Tensor):
        b = bits.to(device=like.device, dtype=torch.float32)
        if b.numel() and not bool(((b >= 1) & (b <= 8) & (b == b.round())).all()):
            raise InvalidInput("per-row bits must be integers in 1..8")
        return 2.0**b - 1
    if not 1 <= bits <= 8:
        raise InvalidInput(f"bits must be in 1..8, got {bits}")
    return torch.tensor(float(2**bits - 1), device=like.device)


def _to_fp16_grid(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest float16 and back to float32; raise when the weights overflow float16."""
    check_float16_range(x)
    return x.to(torch.float16).float()


def check_float16_range(x: torch.Tensor) -> None:
    """InvalidInput unless every value of ``x`` (grid parameters, or the weights they come from) is finite
    and inside the float16 range."""
    if not bool(torch.isfinite(x).all()) or bool((x.abs() > _FP16_MAX).any()):
        raise InvalidInput(
            "quantization grid parameters are not finite or exceed the float16 range: "
            "the weights hold NaN/inf or values beyond ±65504"
        )


def _nonzero(scale: torch.Tensor) -> torch.Tensor:
    """Replace zero scales (constant groups, float16 underflow) by 1 so codes stay finite."""
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def _per_row(p: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """View a ``(rows,)`` parameter so it broadcasts over ``like`` of shape ``(rows, ...)``."""
    return p.reshape(p.shape + (1,) * (like.dim() - p.dim()))
