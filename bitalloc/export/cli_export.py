"""``bitalloc export``: load the model a plan was made for, then hand it to the chosen format's writer."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from bitalloc.allocator.plan import Plan
from bitalloc.export.common import ExportError, check_output_dir
from bitalloc.export.gguf_types import GGUF_PALETTE

FORMATS = ("compressed-tensors", "compressed-tensors-vllm", "gguf", "gptq-dynamic")


def run_export(
    plan_path: Path, fmt: str, output: Path, *, model: str, template: Path | None, progress
) -> str:
    """Export ``plan_path`` for ``model`` to ``output`` in ``fmt``; returns a one-line summary."""
    from bitalloc.models.loading import load_model, resolve_source, split_spec
    from bitalloc.pipeline import CalibrationSettings, get_calibration, quantize_model

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    check_output_dir(output)
    plan = Plan.load(plan_path)
    loaded = load_model(model)
    plan.check_model(loaded.model_hash)
    if fmt == "gptq-dynamic":
        from bitalloc.export.gptq_dynamic import export_gptq_dynamic

        export_gptq_dynamic(plan, output, model_hash=loaded.model_hash)
        return f"wrote {output / 'quantize_config.json'}"
    if fmt.startswith("compressed-tensors"):
        from bitalloc.export.compressed_tensors import export_compressed_tensors, quantization_config

        quantization_config(plan, loaded.model, fmt=fmt)  # refuse before spending time on quantizing
        quantized = quantize_model(loaded, plan, progress)
        export_compressed_tensors(
            quantized, plan, output, model_hash=loaded.model_hash, tokenizer=loaded.tokenizer, fmt=fmt
        )
        return f"wrote a compressed-tensors checkpoint to {output}"
    from bitalloc.export.gguf_writer import export_gguf, unit_types
    from bitalloc.export.imatrix import encode_imatrix, imatrix_from_stats
    from bitalloc.models.units import discover_units

    unit_types(plan)  # refuse candidates GGUF cannot express before any work
    if template is None:
        kind, folder, filename = resolve_source(split_spec(model)[0])
        if kind != "gguf" or folder is None or filename is None:
            raise ExportError("give --template: a .gguf of this model whose tokenizer the export copies")
        template = folder / filename
    candidates = [c for c in plan.assignment if c.candidate not in GGUF_PALETTE]
    quantized = quantize_model(loaded, plan, progress) if candidates else None
    known = asdict(CalibrationSettings())
    settings = CalibrationSettings(**{k: plan.calibration.get(k, v) for k, v in known.items()})
    units = discover_units(loaded.model)
    stats = get_calibration(loaded, units, settings, progress)
    imatrix = encode_imatrix(
        imatrix_from_stats(stats, [c.unit for c in plan.assignment], seq_len=settings.seq_len),
        chunks=settings.n_windows,
        dataset=settings.corpus,
    )
    sizes = export_gguf(
        loaded.model,
        plan,
        output,
        model_hash=loaded.model_hash,
        template=template,
        quantized=quantized,
        imatrix=imatrix,
    )
    return f"wrote {output / 'model.gguf'} ({sizes['file_bytes']} bytes), tensor-types.txt and imatrix.dat"
