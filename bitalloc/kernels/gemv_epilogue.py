"""Work the last program of a GEMV does on its finished output, so that the decoder needs no launch for it.

A GEMV with split-K adds its partial sums atomically: no program knows when the output is complete. Each
program therefore takes a ticket (an acquire-release atomic counter, after its own adds) and the program that
takes the last ticket of its group reads the finished outputs back from L2 and runs the epilogue:

- ``rmsnorm``: one group (every program); the last one writes ``out = w * (y / rms(y))`` over the whole
  output row with Llama's rounding order (the residual stream after the o or down projection, normalised
  for the next projection: the RMSNorm launch is gone).
- ``silu_mul``: the fused gate/up output ``y = [gate; up]`` (``2 I`` outputs, ``I`` a multiple of the block);
  group ``g`` is the programs of gate block ``g`` and up block ``g`` (``2 * SPLIT_K`` tickets), and its last
  program writes ``out[block g] = silu(gate) * up`` (the SiLU-and-multiply launch is gone).

The last program resets its counter to zero, so one ticket buffer serves every call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl

NONE, RMSNORM, SILU_MUL = 0, 1, 2
KINDS = {"rmsnorm": RMSNORM, "silu_mul": SILU_MUL}


@dataclass(frozen=True)
class Epilogue:
    """What the last program does: ``kind`` (``rmsnorm`` / ``silu_mul``), its output ``out`` (contiguous,
    the GEMV's dtype), the norm ``weight`` and ``eps`` (rmsnorm), and a zeroed int32 ``tickets`` buffer."""

    kind: str
    out: torch.Tensor = field(repr=False)
    tickets: torch.Tensor = field(repr=False)
    weight: torch.Tensor | None = field(default=None, repr=False)
    eps: float = 0.0

    def code(self) -> int:
        """The kernel's EPILOGUE constant."""
        return KINDS[self.kind]

    def unfit_reason(self, out_features: int, block_n: int) -> str | None:
        """None when this epilogue runs on a GEMV of ``out_features`` outputs in blocks of ``block_n``,
        else why not."""
        if self.kind not in KINDS:
            return f"unknown epilogue {self.kind!r} (known: {sorted(KINDS)})"
        if self.kind == "rmsnorm":
            if self.weight is None or self.weight.shape != (out_features,):
                return f"rmsnorm needs a weight of {out_features} values"
            if self.out.numel() != out_features:
                return f"rmsnorm writes {out_features} values, out holds {self.out.numel()}"
            return None
        inter = out_features // 2
        if out_features % 2 or inter % block_n:
            return f"silu_mul needs 2 I outputs, I a multiple of the block ({block_n}); got {out_features}"
        if self.out.numel() != inter:
            return f"silu_mul writes {inter} values, out holds {self.out.numel()}"
        if self.tickets.numel() < inter // block_n:
            return f"silu_mul needs {inter // block_n} tickets, the buffer holds {self.tickets.numel()}"
        return None

    def block(self, out_features: int, block_n: int) -> int:
        """The kernel's E_BLOCK: the whole row (rmsnorm) or one output block (silu_mul)."""
        return triton.next_power_of_2(out_features) if self.kind == "rmsnorm" else block_n


@triton.jit
def epilogue_tail(
    y_ptr,
    out_ptr,
    w_ptr,
    ticket_ptr,
    N,
    eps,
    pid_n,
    EPILOGUE: tl.constexpr,
    E_BLOCK: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Take this program's ticket after its adds to ``y``; the last program of the group runs the
    epilogue on the finished ``y`` (read through L2) and resets the counter."""
    group = 0
    count = tl.num_programs(0) * tl.num_programs(1)
    if EPILOGUE == 2:  # gate block g and up block g + num_programs(0) / 2
        group = pid_n % (tl.num_programs(0) // 2)
        count = 2 * tl.num_programs(1)
    tl.debug_barrier()  # every thread's adds are issued before the ticket is taken
    ticket = tl.atomic_add(ticket_ptr + group, 1, sem="acq_rel", scope="gpu")
    if ticket == count - 1:
        if EPILOGUE == 1:
            offs = tl.arange(0, E_BLOCK)  # (E_BLOCK,) the whole row
            mask = offs < N
            y = tl.load(y_ptr + offs, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)
            w = tl.load(w_ptr + offs, mask=mask, other=0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(y * y, axis=0) / N + eps)
            normed = w * (y * rstd).to(w.dtype)
            tl.store(out_ptr + offs, normed.to(out_ptr.dtype.element_ty), mask=mask)
        else:
            offs = group * BLOCK_N + tl.arange(0, E_BLOCK)  # (BLOCK_N,) of the I = N / 2 activations
            gate = tl.load(y_ptr + offs, cache_modifier=".cg")
            up = tl.load(y_ptr + N // 2 + offs, cache_modifier=".cg")
            g = gate.to(tl.float32)
            act = (g / (1.0 + tl.exp(-g))).to(up.dtype)
            tl.store(out_ptr + offs, (act * up).to(out_ptr.dtype.element_ty))
        tl.store(ticket_ptr + group, 0)  # every program of the group has taken its ticket
