"""GPTQModel ``dynamic`` quantize_config: per-module bit widths and group sizes for a mixed plan.

GPTQModel (and vLLM's GPTQ loader) read ``dynamic`` as ``{regex: overrides}``: a key prefixed ``+:`` (or
nothing) overrides ``bits``/``group_size`` for modules the regex matches, ``-:`` leaves them unquantized.
The base ``bits``/``group_size`` are the plan's most common scheme and only units that differ get a
rule. Fused groups are kept whole: q/k/v and gate/up must share a scheme, and each rule also names the
fused module vLLM builds (``qkv_proj``, ``gate_up_proj``), so it matches whichever name the reader uses.
Every regex is anchored (``^...$``) and escaped: one module never matches another's rule.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from bitalloc.allocator.plan import Plan
from bitalloc.export.common import check_fused, check_output_dir, fused_groups, staged_dir
from bitalloc.export.palettes import check_plan
from bitalloc.quantizers.candidate import Candidate

_FUSED_NAMES = {"q_proj": "qkv_proj", "gate_proj": "gate_up_proj"}


def dynamic_config(plan: Plan, *, model_hash: str) -> dict:
    """The quantize_config dict for ``plan`` (symmetric GPTQ, 2/3/4/8 bits)."""
    plan.check_model(model_hash)
    check_plan(plan, "gptq-dynamic")
    scheme_of = {}
    for choice in plan.assignment:
        cand = Candidate.parse(choice.candidate)
        scheme_of[choice.unit] = (cand.bits, cand.group_size)
    check_fused(plan, scheme_of, "gptq-dynamic")
    (bits, group_size), _ = Counter(scheme_of.values()).most_common(1)[0]
    units = [c.unit for c in plan.assignment]
    grouped = {u for g in fused_groups(units) for u in g}
    rules: list[tuple[list[str], tuple[int, int]]] = [(g, scheme_of[g[0]]) for g in fused_groups(units)]
    rules += [([u], scheme_of[u]) for u in units if u not in grouped]
    dynamic = {}
    for members, (b, g) in rules:
        if (b, g) == (bits, group_size):
            continue
        dynamic[f"+:{_pattern(members)}"] = {"bits": b, "group_size": g}
    return {
        "bits": bits,
        "group_size": group_size,
        "sym": True,
        "desc_act": False,
        "lm_head": False,
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
        "dynamic": dynamic,
    }


def export_gptq_dynamic(plan: Plan, out_dir: Path | str, *, model_hash: str) -> Path:
    """Write ``quantize_config.json`` and ``plan.json`` into the new folder ``out_dir``."""
    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    config = dynamic_config(plan, model_hash=model_hash)
    with staged_dir(out_dir) as tmp:
        (tmp / "quantize_config.json").write_text(json.dumps(config, indent=2) + "\n")
        plan.save(tmp / "plan.json")
    return out_dir


def _pattern(members: list[str]) -> str:
    """Anchored regex matching exactly ``members`` (siblings) and the fused module a runtime builds."""
    parent = members[0].rpartition(".")[0]
    leaves = [m.rpartition(".")[2] for m in members]
    if len(leaves) > 1 and leaves[0] in _FUSED_NAMES:
        leaves.append(_FUSED_NAMES[leaves[0]])
    alternatives = "|".join(re.escape(leaf) for leaf in leaves)
    prefix = f"{re.escape(parent)}\\." if parent else ""
    return f"^{prefix}(?:{alternatives})$" if len(leaves) > 1 else f"^{prefix}{alternatives}$"
