"""What each runtime can load, as a filter on candidates: restrict the allocator up front, check plans after.

- ``compressed-tensors`` (transformers): pack-quantized int weights of 1..8 bits
  (``PackedQuantizationCompressor.can_compress``), group strategy. Its asymmetric form stores an
  *integer* zero point packed like the codes, while our asymmetric grids store a float16 minimum
  (``w = scale*q + min``), so only symmetric candidates are expressible (``w = scale*(q - 2**(b-1))``
  is exactly compressed-tensors' signed ``q' * scale``).
- ``compressed-tensors-vllm``: the same files for vLLM, whose WNA16 kernels take only 4 and 8 bits
  (uint4b8, uint8b128) with group sizes 32, 64 or 128.
- ``gptq-dynamic`` (GPTQModel): symmetric GPTQ checkpoints of 2, 3, 4 or 8 bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from bitalloc.allocator.plan import Plan
from bitalloc.export.common import ExportError
from bitalloc.quantizers.candidate import Candidate
from bitalloc.sensitivity.profile import SensitivityProfile


@dataclass(frozen=True)
class ExportPalette:
    """The candidates one runtime loads: allowed bit widths, group sizes (None: any) and symmetry."""

    fmt: str
    bits: frozenset[int]
    group_sizes: frozenset[int] | None
    symmetric_only: bool
    why: str

    def reason(self, candidate: Candidate) -> str | None:
        """Why ``candidate`` cannot be loaded, or None when it can."""
        if self.symmetric_only and not candidate.symmetric:
            return f"{candidate.name} is asymmetric; {self.fmt} takes symmetric grids only ({self.why})"
        if candidate.bits not in self.bits:
            return f"{candidate.name} has {candidate.bits} bits; {self.fmt} takes {sorted(self.bits)}"
        if self.group_sizes is not None and candidate.group_size not in self.group_sizes:
            return (
                f"{candidate.name} has group size {candidate.group_size}; "
                f"{self.fmt} takes {sorted(self.group_sizes)}"
            )
        return None

    def allows(self, candidate: Candidate) -> bool:
        """Whether the runtime loads ``candidate``."""
        return self.reason(candidate) is None


PALETTES = {
    "compressed-tensors": ExportPalette(
        "compressed-tensors",
        frozenset(range(1, 9)),
        None,
        True,
        "its zero points are integers packed like the codes; ours are float16 minimums",
    ),
    "compressed-tensors-vllm": ExportPalette(
        "compressed-tensors-vllm",
        frozenset({4, 8}),
        frozenset({32, 64, 128}),
        True,
        "vLLM's WNA16 kernels are symmetric uint4b8 / uint8b128",
    ),
    "gptq-dynamic": ExportPalette(
        "gptq-dynamic",
        frozenset({2, 3, 4, 8}),
        None,
        True,
        "GPTQ stores integer zero points; ours are float16 minimums",
    ),
}


def export_palette(fmt: str) -> ExportPalette:
    """The palette of format ``fmt``; raise ExportError naming the known formats."""
    try:
        return PALETTES[fmt]
    except KeyError:
        raise ExportError(f"unknown export format {fmt!r}; known: {', '.join(PALETTES)}") from None


def restrict_profile(profile: SensitivityProfile, fmt: str) -> SensitivityProfile:
    """The profile with only the candidates ``fmt`` loads, so every plan made from it exports."""
    palette = export_palette(fmt)
    keep = [name for name in profile.meta["palette"] if palette.allows(Candidate.parse(name))]
    if not keep:
        raise ExportError(f"no candidate of the profile's palette can be loaded by {fmt}; profile with one")
    table = profile.table[profile.table["candidate"].isin(keep)].reset_index(drop=True)
    missing = sorted(set(profile.units()) - set(table["unit"]))
    if missing:
        raise ExportError(f"{fmt} can load no candidate of unit {missing[0]!r}; widen the profile's palette")
    meta = dict(profile.meta, palette=keep, export_format=fmt)
    return SensitivityProfile(table=pd.DataFrame(table), meta=meta)


def check_plan(plan: Plan, fmt: str) -> None:
    """Raise ExportError on the first unit whose candidate ``fmt`` cannot load."""
    from bitalloc.export.gguf_types import GGUF_PALETTE

    palette = export_palette(fmt)
    for choice in plan.assignment:
        if choice.candidate in GGUF_PALETTE:
            raise ExportError(
                f"unit {choice.unit!r} is planned in the GGUF type {choice.candidate}; export it as gguf"
            )
        why = palette.reason(Candidate.parse(choice.candidate))
        if why is not None:
            raise ExportError(
                f"unit {choice.unit!r}: {why}; re-plan from `restrict_profile(profile, {fmt!r})`"
            )
