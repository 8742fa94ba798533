"""Export formats that need only the plan, not the weights: what the planning service hands out.

- ``bitalloc.plan/v1``: the plan itself (JSON);
- ``gptq-dynamic``: GPTQModel's ``quantize_config.json`` with its ``dynamic`` per-module overrides;
- ``llama-tensor-types``: the file ``llama-quantize --tensor-type-file`` reads (one ``regex=TYPE`` per line)
  for the plan's units; the other tensors take the type named on llama-quantize's command line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from bitalloc.allocator.plan import Plan
from bitalloc.export.common import ExportError

DOCUMENT_FORMATS = ("bitalloc.plan/v1", "gptq-dynamic", "llama-tensor-types")


@dataclass(frozen=True)
class Document:
    """One exported file: its text, media type and suggested file name."""

    text: str
    media_type: str
    filename: str


def plan_document(plan: Plan, fmt: str) -> Document:
    """``plan`` in the plan-only format ``fmt``; ExportError when the plan cannot be expressed in it."""
    if fmt == "bitalloc.plan/v1":
        return Document(json.dumps(plan.to_json(), indent=2) + "\n", "application/json", "plan.json")
    if fmt == "gptq-dynamic":
        from bitalloc.export.gptq_dynamic import dynamic_config

        config = dynamic_config(plan, model_hash=plan.model_hash)
        return Document(json.dumps(config, indent=2) + "\n", "application/json", "quantize_config.json")
    if fmt == "llama-tensor-types":
        from bitalloc.export.gguf_names import unit_gguf_name
        from bitalloc.export.gguf_writer import tensor_type_lines, unit_types

        # The plan's units only: other tensors get the type given to llama-quantize on its command line.
        lines = tensor_type_lines({unit_gguf_name(u): t for u, t in unit_types(plan).items()})
        return Document("\n".join(lines) + "\n", "text/plain", "tensor-types.txt")
    raise ExportError(f"unknown export format {fmt!r}; known formats: {', '.join(DOCUMENT_FORMATS)}")
