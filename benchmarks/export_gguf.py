"""llama.cpp's preset mixes against bitalloc's allocation over the same GGUF types, on SmolLM2-135M.

For each preset (Q2_K ... Q6_K) its per-tensor rules (``bitalloc.export.gguf_presets``) give every Linear
a GGUF type; bitalloc then allocates the same GGUF palette (k-quants, IQ4_NL, legacy) under the preset's
exact byte count, from Hessian-proxy errors of every (unit, type). The embedding (which is also the tied
LM head) is Q8_0 in both, as every preset stores it. Both mixes are encoded by the same encoders and
scored by perplexity and KL on the same held-out wiki text. The bitalloc mix at Q4_K_M's size is also
written as a real GGUF (with its tensor-type file and imatrix) and loaded back by transformers.

Run: `.venv/bin/python benchmarks/export_gguf.py` (writes runs/bench-export-gguf/, prints Markdown).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

from bitalloc.allocator.problem import Budget
from bitalloc.evaluate.perplexity import evaluate_models
from bitalloc.export.gguf_names import unit_gguf_name
from bitalloc.export.gguf_plan import dequantize_units, gguf_fixed_bytes, gguf_profile
from bitalloc.export.gguf_presets import preset_type
from bitalloc.export.gguf_types import GgufType
from bitalloc.export.gguf_writer import export_gguf, unit_types
from bitalloc.export.imatrix import encode_imatrix, imatrix_from_stats
from bitalloc.models.loading import load_model, resolve_source
from bitalloc.models.units import discover_units
from bitalloc.pipeline import CalibrationSettings, EvalSettings, evaluation_tokens, get_calibration, make_plan
from bitalloc.sensitivity.profile import SensitivityProfile

PRESETS = ("Q4_K_M", "Q3_K_M", "Q5_K_M", "Q2_K", "Q6_K", "Q3_K_S", "Q3_K_L", "Q4_K_S", "Q5_K_S")
EMBEDDING = "Q8_0"
# The types llama.cpp's k-quant presets use (their k-quants and the fallbacks for rows of 576). Q4_0/Q4_1 are
# left out: the bundled SmolLM2 weights lie exactly on a Q4_1 grid, so Q4_1 would be lossless here.
SAME_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "Q5_0", "Q5_1", "Q8_0")


def with_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A copy of ``model`` whose listed Linear weights are replaced (everything else shared)."""
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    out = copy.deepcopy(model, memo=shared)
    for unit, w in weights.items():
        out.get_submodule(unit).weight = torch.nn.Parameter(w, requires_grad=False)
    return out


def report(output: Path, rows: list[dict], reference: float, n_tokens: int) -> None:
    """Write results.json and print the Markdown table of the rows so far."""
    (output / "results.json").write_text(json.dumps({"reference_ppl": reference, "rows": rows}, indent=2))
    print(
        f"\nSmolLM2-135M, wiki eval {n_tokens} tokens, float reference ppl {reference:.3f}; "
        f"{platform.processor() or platform.machine()}, {date.today()}\n"
    )
    print("| preset | mix | tensor bytes | linear bpw | proxy error | ppl | KL | types |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        types = ", ".join(f"{k}:{v}" for k, v in r["types"].items())
        print(
            f"| {r['preset']} | {r['mix']} | {r['tensor_bytes']} | {r['linear_bpw']:.3f} | "
            f"{r['proxy_error']:.4g} | {r['ppl']:.3f} | {r['kl']:.4f} | {types} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("runs/bench-export-gguf"))
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--all-types", action="store_true", help="let bitalloc use Q4_0/Q4_1 too")
    parser.add_argument("--skip-roundtrip", action="store_true", help="do not write and reload the GGUF")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    started = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {msg}", flush=True)

    loaded = load_model("smollm2-135m")
    model, config = loaded.model, loaded.model.config
    units = discover_units(model)
    settings = CalibrationSettings()
    stats = get_calibration(loaded, units, settings)
    path = args.output / "gguf_profile.parquet"
    if path.exists() and SensitivityProfile.load(path).model_hash == loaded.model_hash:
        profile = SensitivityProfile.load(path)
    else:
        log("profiling GGUF types")
        profile = gguf_profile(
            model, units, stats, embedding_type=EMBEDDING, meta={"model_name": loaded.name}
        )
        profile.save(path)
    log("profile ready")
    types_allowed = SAME_TYPES if not args.all_types else tuple(profile.meta["palette"])
    profile = SensitivityProfile(
        table=profile.table[profile.table["candidate"].isin(types_allowed)].reset_index(drop=True),
        meta=dict(profile.meta, palette=[t for t in profile.meta["palette"] if t in types_allowed]),
    )
    err = {(u, c): e for u, c, e in profile.table[["unit", "candidate", "error"]].itertuples(index=False)}
    fixed = gguf_fixed_bytes(model, units, EMBEDDING)
    tokens = evaluation_tokens(loaded, "wiki", EvalSettings(max_tokens=args.eval_tokens))
    n_gqa = config.num_attention_heads // config.num_key_value_heads
    rows: list[dict] = []
    reference = evaluate_models({}, model, tokens)["reference"].perplexity
    for preset in args.presets.split(","):
        types = {
            u.name: GgufType.of(
                preset_type(
                    preset,
                    unit_gguf_name(u.name),
                    u.shape,
                    n_layers=config.num_hidden_layers,
                    n_gqa=n_gqa,
                    tied_output=True,
                )
            )
            for u in units
        }
        preset_bytes = sum(t.nbytes(u.shape) for u, t in zip(units, types.values(), strict=True))
        plan = make_plan(profile, Budget(max_bytes=preset_bytes), solver="milp")
        plan.save(args.output / f"bitalloc-{preset}.json")
        ours = unit_types(plan)
        models = {
            "preset": with_weights(model, dequantize_units(model, types)),
            "bitalloc": with_weights(model, dequantize_units(model, ours)),
        }
        results = evaluate_models(models, model, tokens)
        for name, mix in (("preset", types), ("bitalloc", ours)):
            nbytes = sum(t.nbytes(u.shape) for u, t in zip(units, mix.values(), strict=True)) + fixed
            counts: dict[str, int] = {}
            for t in mix.values():
                counts[t.name] = counts.get(t.name, 0) + 1
            rows.append(
                {
                    "preset": preset,
                    "mix": name,
                    "tensor_bytes": nbytes,
                    "linear_bpw": 8 * (nbytes - fixed) / sum(u.numel for u in units),
                    "proxy_error": sum(err[(u, t.name)] for u, t in mix.items()),
                    "ppl": results[name].perplexity,
                    "kl": results[name].kl,
                    "types": dict(sorted(counts.items())),
                }
            )
        log(
            f"{preset}: preset ppl {results['preset'].perplexity:.3f} "
            f"bitalloc {results['bitalloc'].perplexity:.3f}"
        )
        if preset == "Q4_K_M" and not args.skip_roundtrip:
            _, folder, filename = resolve_source("smollm2-135m")
            imatrix = encode_imatrix(
                imatrix_from_stats(stats, [u.name for u in units], seq_len=settings.seq_len),
                chunks=settings.n_windows,
                dataset="wiki",
            )
            out_dir = args.output / "bitalloc-Q4_K_M-gguf"
            if not out_dir.exists():
                export_gguf(
                    model,
                    plan,
                    out_dir,
                    model_hash=loaded.model_hash,
                    template=folder / filename,
                    imatrix=imatrix,
                )
            from transformers import AutoModelForCausalLM

            back = AutoModelForCausalLM.from_pretrained(out_dir, gguf_file="model.gguf", dtype=torch.float32)
            loaded_back = evaluate_models({"gguf": back.eval()}, model, tokens)["gguf"]
            rows.append(
                {
                    "preset": preset,
                    "mix": "bitalloc, written as GGUF, loaded by transformers",
                    "tensor_bytes": (out_dir / "model.gguf").stat().st_size,
                    "linear_bpw": float("nan"),
                    "proxy_error": float("nan"),
                    "ppl": loaded_back.perplexity,
                    "kl": loaded_back.kl,
                    "types": {"file": "model.gguf (bytes = whole file)"},
                }
            )
        report(args.output, rows, reference, tokens.numel())  # after every preset: partial runs keep results
    log("done")


if __name__ == "__main__":
    main()
