"""What each kind of launch costs the decode step: the captured step timed with that kind left out.

    python benchmarks/decoder_ablation.py [--tokens 64] [--context 0,1024] [--head-bits 4,8]

The 1.1 B Llama-shaped model of ``kernels_e2e.py`` under its mixed 4/3-bit plan. The step is re-captured with
one kind of launch removed (the norms, the attention, the SiLU-and-multiply, the LM head, or the decoder
layers' projections), and the difference to the whole step is what that kind costs on the step's critical
path, overlap included. The whole step runs the weightless RMSNorms inside the GEMVs that read them
(``kernels/row_norm.py``); the row "no RMS norms" leaves out their standalone launches (compare it with the
row "norms as own launches"). Rows that leave out the LM head or the layer projections now leave out the norms
inside them too, so they do not compare with sessions before 22. The outputs of a step with launches removed
are wrong; only its time counts. With ``--head-bits`` the step is also timed with the LM head quantized (RTN,
group 128, asymmetric) instead of left in float16; with ``--attention-splits`` with that many attention
programs per query head at every position (the decoder's own choice follows the position).
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from functools import partial
from unittest import mock

import torch
from kernels_e2e import decoder_step_us, llama_1b, mixed_plan, quantize_head, quantize_plan

import bitalloc.kernels.row_norm as row_norm_module
import bitalloc.runtime.llama_decoder as decoder_module
from bitalloc.kernels.registry import Registry
from bitalloc.runtime.llama_decoder import LlamaDecoder
from bitalloc.runtime.projection import FusedProjection


def _skip(*args, **kwargs) -> None:
    """A launch left out."""


class _Skipped:
    """A projection whose launch is left out."""

    def run(self, *args, **kwargs) -> None:
        """No launch."""


SMALL_KERNELS = {"attention": "decode_attention", "silu": "silu_mul"}  # kind -> the decoder's launch


@contextmanager
def without(decoder: LlamaDecoder, kinds: tuple[str, ...]):
    """Capture-time patches that leave ``kinds`` out of the decoder's step."""
    with ExitStack() as stack:
        for kind in kinds:
            if kind in ("unfused", "norm"):  # the norms leave the GEMVs as their own launches (RowNorm.apply)
                stack.enter_context(mock.patch.object(decoder, "fuse_norms", False))
            if kind == "norm":  # ... which are then left out
                stack.enter_context(mock.patch.object(row_norm_module, "rmsnorm", _skip))
            elif kind in SMALL_KERNELS:
                stack.enter_context(mock.patch.object(decoder_module, SMALL_KERNELS[kind], _skip))
            elif kind == "head":
                stack.enter_context(mock.patch.object(decoder, "lm_head", _Skipped()))
            elif kind == "projections":
                skipped = _Skipped()
                layers = [
                    replace(x, qkv=skipped, o=skipped, gate_up=skipped, down=skipped) for x in decoder.layers
                ]
                stack.enter_context(mock.patch.object(decoder, "layers", layers))
        yield


ABLATIONS: dict[str, tuple[str, ...]] = {
    "whole step": (),
    "norms as own launches": ("unfused",),
    "no RMS norms": ("norm",),
    "no attention": ("attention",),
    "no SiLU-mul": ("silu",),
    "no norms, attention, SiLU-mul": ("norm", "attention", "silu"),
    "no LM head": ("head",),
    "no layer projections": ("projections",),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--context", default="0,1024", help="comma-separated positions decoding starts at")
    parser.add_argument("--head-bits", default="", help="also time the step with the LM head at these bits")
    parser.add_argument("--attention-splits", default="", help="also time these attention splits per head")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("decoder_ablation needs a CUDA GPU")
    contexts = [int(c) for c in args.context.split(",")]
    model = llama_1b()
    quantize_plan(model, mixed_plan(model))
    decoder = LlamaDecoder(model, max(contexts) + args.tokens + 16)
    # each row: its label and the patches its step is captured and timed under
    rows = [(label, partial(without, decoder, kinds)) for label, kinds in ABLATIONS.items()]
    most = decoder.workspace.m.shape[1]  # decode_attention caps the splits there
    for splits in sorted({min(most, int(b)) for b in args.attention_splits.split(",") if b}):
        fixed = partial(mock.patch.object, decoder, "_splits", lambda position, s=splits: s)
        rows.append((f"attention, {splits} splits per head", fixed))
    for bits in [int(b) for b in args.head_bits.split(",") if b]:
        undo = quantize_head(model, bits)
        head = FusedProjection([model.lm_head], Registry.load())
        undo()
        rows.append((f"LM head w{bits}g128", partial(mock.patch.object, decoder, "lm_head", head)))
    print(f"{torch.cuda.get_device_name()}; mixed 4/3-bit plan, LM head float16; {args.tokens} tokens")
    print("\n| step | " + " | ".join(f"context {c}: us (sync each / back to back)" for c in contexts) + " |")
    print("|---|" + "---|" * len(contexts))
    base: dict[int, float] = {}  # the whole step's time per context
    for label, patches in rows:
        cells = []
        for ctx in contexts:
            with patches():
                sync_us, b2b_us = decoder_step_us(decoder, args.tokens, ctx)
            base.setdefault(ctx, sync_us)
            cells.append(f"{sync_us:.0f} / {b2b_us:.0f} ({sync_us - base[ctx]:+.0f})")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
