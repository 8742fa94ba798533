"""Offloaded calibration and profiling: a model larger than memory, one decoder layer loaded at a time.

``offloaded_model`` builds the model with real embeddings (and every other tensor outside the decoder
layers) but with its decoder layers on the meta device; ``SafetensorsLayers`` loads one layer's
tensors from the checkpoint's safetensors files before its calibration pass and moves it back to meta
after it. ``profile_offloaded`` scores each layer's units while that layer is loaded, so neither the
whole model nor all Hessians ever sit in memory together.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from bitalloc.errors import InvalidInput
from bitalloc.models.units import UNQUANTIZED_BYTES_PER_ELEMENT, Unit, discover_units
from bitalloc.quantizers.candidate import Candidate
from bitalloc.sensitivity.calibrate import CalibrationStats
from bitalloc.sensitivity.profile import SensitivityProfile
from bitalloc.sensitivity.profiler import ESTIMATOR, profile_model
from bitalloc.sensitivity.streaming import Reduce, decoder_layers, stream_layers


def model_folder(spec: str) -> Path:
    """The local HF folder (with safetensors) of a model spec; GGUF sources go through the float cache."""
    from bitalloc.models.loading import FOLD_NORMS, _cached_float_copy, resolve_source, split_spec

    if split_spec(spec)[1]:
        raise InvalidInput(
            f"offloading reads the checkpoint's tensors as stored and cannot fold the norms of {spec!r}: "
            f"calibrate without offloading (whole-model or streaming), or drop the {FOLD_NORMS} suffix"
        )
    kind, folder, filename = resolve_source(spec)
    if kind == "gguf" and folder is not None and filename is not None:
        return _cached_float_copy(folder, filename)
    if kind == "folder" and folder is not None:
        return folder
    raise InvalidInput(
        f"offloading reads a local checkpoint, and {spec!r} is a hub id: download it first "
        "(huggingface-cli download --local-dir DIR) and pass DIR"
    )


def checkpoint_tensors(folder: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file of an HF checkpoint folder (single file or sharded index)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / "model.safetensors"
    if not single.exists():
        raise InvalidInput(
            f"{folder} holds no model.safetensors (or index): offloading reads safetensors checkpoints; "
            "re-save the model with save_pretrained(safe_serialization=True)"
        )
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as f:
        return {name: single for name in f.keys()}  # noqa: SIM118 (safe_open has no iterator)


def read_tensors(files: dict[str, Path], names: Sequence[str], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors ``names`` from the checkpoint, as ``dtype`` (floating tensors only converted)."""
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(files[name], []).append(name)
    out = {}
    for file, keys in by_file.items():
        with safe_open(str(file), framework="pt") as f:
            for key in keys:
                t = f.get_tensor(key)
                out[key] = t.to(dtype) if t.is_floating_point() else t
    return out


@dataclass(frozen=True, eq=False)
class OffloadedModel:
    """A model whose decoder layers live on the meta device until loaded, with where they come from."""

    model: nn.Module
    folder: Path
    layers_prefix: str  # checkpoint name of the layer list, e.g. "model.layers"
    model_hash: str
    files: dict[str, Path]
    dtype: torch.dtype


def offloaded_model(
    folder: Path,
    *,
    num_layers: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> OffloadedModel:
    """Build the model of an HF folder with meta decoder layers; everything else is loaded for real.

    ``num_layers`` keeps only the first decoder layers (a cheap sub-model for tests and benchmarks).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    n = config.num_hidden_layers if num_layers is None else num_layers
    if not 1 <= n <= config.num_hidden_layers:
        raise InvalidInput(f"num_layers must be in 1..{config.num_hidden_layers}, got {n}")
    config.num_hidden_layers = n
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = config.layer_types[:n]
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=dtype)
    units = discover_units(skeleton)
    prefix, meta_layers = decoder_layers(skeleton, units)
    shell_config = copy.deepcopy(config)
    shell_config.num_hidden_layers = 0
    if getattr(shell_config, "layer_types", None) is not None:
        shell_config.layer_types = []
    model = AutoModelForCausalLM.from_config(shell_config, dtype=dtype)  # real, without layers
    parent, _, leaf = prefix.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, meta_layers)
    shell_config.num_hidden_layers = n
    if getattr(shell_config, "layer_types", None) is not None:
        shell_config.layer_types = list(config.layer_types)
    head = _untied_head(model)  # calibration never runs the LM head: an untied one is not loaded
    skip = {f"{name}." for name, m in model.named_modules() if head is not None and m is head}
    files = checkpoint_tensors(folder)
    outside = [k for k in files if not k.startswith((f"{prefix}.", *skip))]
    state = read_tensors(files, outside, dtype)
    missing, _ = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not k.startswith((f"{prefix}.", *skip))]
    if missing and any(k != "lm_head.weight" for k in missing):
        raise InvalidInput(f"the checkpoint in {folder} lacks tensors {missing[:3]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    parent_module = model.get_submodule(parent) if parent else model
    setattr(parent_module, leaf, nn.ModuleList())  # move everything but the meta layers (and head)
    head_slot = None
    if head is not None:
        head_name = next(name for name, m in model.named_modules() if m is head)
        head_parent, _, head_leaf = head_name.rpartition(".")
        head_slot = (model.get_submodule(head_parent) if head_parent else model, head_leaf)
        setattr(*head_slot, nn.Identity())
        head.to("meta")
    model.to(device)
    setattr(parent_module, leaf, meta_layers)
    if head_slot is not None:
        setattr(*head_slot, head)
    model.eval().requires_grad_(False)
    return OffloadedModel(model, folder, prefix, _folder_hash(folder, n), files, dtype)


def _untied_head(model: nn.Module) -> nn.Module | None:
    """The output-embedding module when it does not share its weight with the input embeddings."""
    get_out, get_in = (
        getattr(model, "get_output_embeddings", None),
        getattr(model, "get_input_embeddings", None),
    )
    head = get_out() if get_out is not None else None
    embed = get_in() if get_in is not None else None
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    if (
        tied
        or head is None
        or embed is None
        or getattr(head, "weight", None) is getattr(embed, "weight", None)
    ):
        return None
    return head


def _folder_hash(folder: Path, n: int) -> str:
    """The model hash bitalloc recorded for the folder (a derived one when layers are cut)."""
    meta = folder / "bitalloc.json"
    if meta.exists():
        base = json.loads(meta.read_text())["model_hash"]
    else:  # no recorded content hash: identify the checkpoint files
        digest = hashlib.sha256()
        for file in sorted(set(checkpoint_tensors(folder).values())):
            digest.update(f"{file.name}|{file.stat().st_size}|{file.stat().st_mtime_ns}".encode())
        base = digest.hexdigest()
    full = json.loads((folder / "config.json").read_text()).get("num_hidden_layers", n)
    return base if n == full else hashlib.sha256(f"{base}|layers:{n}".encode()).hexdigest()


class SafetensorsLayers:
    """A LayerSource that reads decoder layer ``i`` from the checkpoint and returns it to meta after."""

    def __init__(self, offloaded: OffloadedModel, device: torch.device | str = "cpu") -> None:
        self.offloaded = offloaded
        self.device = torch.device(device)

    def load(self, index: int, layer: nn.Module) -> None:
        """Assign the layer's tensors from the checkpoint (on ``device``)."""
        prefix = f"{self.offloaded.layers_prefix}.{index}."
        names = [k for k in self.offloaded.files if k.startswith(prefix)]
        state = read_tensors(self.offloaded.files, names, self.offloaded.dtype)
        layer.load_state_dict({k[len(prefix) :]: v.to(self.device) for k, v in state.items()}, assign=True)
        still = [n for n, t in [*layer.named_parameters(), *layer.named_buffers()] if t.device.type == "meta"]
        if still:
            raise InvalidInput(f"layer {index} has tensors {still[:3]} that the checkpoint does not hold")
        layer.requires_grad_(False)

    def unload(self, index: int, layer: nn.Module) -> None:
        """Free the layer's weights (back to the meta device)."""
        layer.to("meta")


def offloaded_unquantized_bytes(model: nn.Module, units: Sequence[Unit]) -> int:
    """``unquantized_bytes`` of a model whose layers may be on meta (meta tensors are never tied)."""
    quantized = {f"{u.name}.weight" for u in units}
    seen: set[int] = set()
    total = 0
    for name, tensor in model.state_dict().items():
        if name in quantized:
            continue
        if not tensor.is_meta:
            if tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
        per_element = UNQUANTIZED_BYTES_PER_ELEMENT if tensor.is_floating_point() else tensor.element_size()
        total += tensor.numel() * per_element
    return total


def profile_offloaded(
    offloaded: OffloadedModel,
    windows: torch.Tensor,
    palette: Sequence[Candidate],
    *,
    corpus_hash: str,
    batch_size: int = 4,
    settings: dict | None = None,
    meta: dict | None = None,
    device: torch.device | str = "cpu",
    reduce: Reduce | None = None,
    keep_hessians: bool = False,
    on_layer: Callable[[int, int], None] | None = None,
) -> tuple[SensitivityProfile, CalibrationStats | None]:
    """Calibrate and score ``offloaded`` one layer at a time (the same rows as ``profile_model``).

    Returns the profile and, with ``keep_hessians``, the CalibrationStats (else None: each layer's
    Hessians are dropped once its units are scored). ``device`` must be the one ``offloaded_model``
    was built on; ``reduce`` makes it a distributed run (see ``bitalloc.sensitivity.distributed``).
    """
    model = offloaded.model
    units = discover_units(model)
    tables, hessians, abs_means = [], {}, {}
    n_tokens = windows.numel()
    source = SafetensorsLayers(offloaded, device)
    for done in stream_layers(
        model, units, windows, batch_size=batch_size, source=source, device=device, reduce=reduce
    ):
        stats = CalibrationStats(done.hessians, done.n_tokens, offloaded.model_hash, corpus_hash)
        tables.append(profile_model(model, done.units, stats, palette, meta={"unquantized_bytes": 0}).table)
        n_tokens = done.n_tokens
        if keep_hessians:
            hessians.update(done.hessians)
            abs_means.update(done.abs_means)
        if on_layer is not None:
            on_layer(done.index + 1, done.n_layers)
    table = pd.concat(tables, ignore_index=True)
    full_meta = dict(
        meta or {},
        unquantized_bytes=offloaded_unquantized_bytes(model, units),
        model_hash=offloaded.model_hash,
        corpus_hash=corpus_hash,
        n_tokens=n_tokens,
        calibration=dict(settings or {}),
        estimator=ESTIMATOR,
        palette=[c.name for c in palette],
    )
    stats = None
    if keep_hessians:
        stats = CalibrationStats(
            {u.name: hessians[u.name] for u in units},
            n_tokens,
            offloaded.model_hash,
            corpus_hash,
            dict(settings or {}),
            {u.name: abs_means[u.name] for u in units},
        )
    return SensitivityProfile(table=table, meta=full_meta), stats
