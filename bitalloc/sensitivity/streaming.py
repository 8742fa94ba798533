"""Layer-by-layer calibration: the embeddings run once, then each decoder layer on every window.

The inputs of the first decoder layer (hidden states and the keyword arguments the model passes:
position embeddings, mask, ...) are captured for every batch by stopping the model's forward there.
Each layer then runs on all batches with hooks on its units, its Hessians are finished, and its
outputs become the next layer's inputs. Peak memory is one layer, its Hessians and the hidden states
of the calibration windows; a ``LayerSource`` can load each layer's weights on demand (offloading).
The sums are the same additions in the same order as the whole-model hook pass (``calibrate``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from bitalloc.errors import InvalidInput
from bitalloc.models.units import Unit
from bitalloc.sensitivity.calibrate import NO_UNITS_FIX, CalibrationStats, HessianSums, NoQuantizableUnits

Reduce = Callable[[Sequence[torch.Tensor]], None]  # sums the given tensors in place across processes


class LayerSource(Protocol):
    """Makes decoder layer ``index`` runnable before its pass and may free it afterwards."""

    def load(self, index: int, layer: nn.Module) -> None: ...

    def unload(self, index: int, layer: nn.Module) -> None: ...


class InMemory:
    """Every layer already holds its weights: nothing to load or free."""

    def load(self, index: int, layer: nn.Module) -> None:
        """Nothing to do."""

    def unload(self, index: int, layer: nn.Module) -> None:
        """Nothing to do."""


@dataclass(frozen=True, eq=False)
class LayerStats:
    """The finished statistics of one decoder layer's units (weights still loaded while it is yielded)."""

    index: int
    layer: nn.Module
    units: tuple[Unit, ...]
    hessians: dict[str, torch.Tensor]
    abs_means: dict[str, torch.Tensor]
    n_tokens: int
    n_layers: int


class _Captured(Exception):
    """Raised by the capture hook to stop the forward at the first decoder layer."""


def decoder_layers(model: nn.Module, units: tuple[Unit, ...]) -> tuple[str, nn.ModuleList]:
    """The outermost ModuleList holding units (the decoder layers) and its name."""
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    for name, layers in sorted(lists, key=lambda nm: nm[0].count(".")):
        if any(u.name.startswith(f"{name}.") for u in units):
            return name, layers
    raise InvalidInput(
        "streaming calibration found no list of decoder layers holding the units; use calibrate() "
        "(whole-model hooks) for this model"
    )


def _units_by_layer(prefix: str, n_layers: int, units: tuple[Unit, ...]) -> list[tuple[Unit, ...]]:
    grouped: list[list[Unit]] = [[] for _ in range(n_layers)]
    outside = []
    for u in units:
        head, _, rest = u.name[len(prefix) + 1 :].partition(".")
        if u.name.startswith(f"{prefix}.") and head.isdigit() and rest and int(head) < n_layers:
            grouped[int(head)].append(u)
        else:
            outside.append(u.name)
    if outside:
        raise InvalidInput(
            f"units {outside[:3]} lie outside the decoder layers {prefix!r}; streaming calibration only "
            "sees units inside them: use calibrate() (whole-model hooks) or leave those units out"
        )
    return [tuple(g) for g in grouped]


def capture_layer_inputs(
    model: nn.Module, first_layer: nn.Module, windows: torch.Tensor, batch_size: int, device: torch.device
) -> list[tuple[torch.Tensor, dict]]:
    """(hidden (b, seq, d), keyword arguments) that ``first_layer`` receives, for each batch of windows."""
    captured: list[tuple[torch.Tensor, dict]] = []

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden, {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _Captured

    handle = first_layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start : start + batch_size].to(device)  # (b, seq_len)
            try:
                model(input_ids=batch, use_cache=False)
            except _Captured:
                continue
            raise InvalidInput("the model's forward never reached its first decoder layer")
    finally:
        handle.remove()
    return captured


def stream_layers(
    model: nn.Module,
    units: tuple[Unit, ...],
    windows: torch.Tensor,
    *,
    batch_size: int = 4,
    source: LayerSource | None = None,
    device: torch.device | str = "cpu",
    reduce: Reduce | None = None,
) -> Iterator[LayerStats]:
    """Calibrate layer by layer, yielding each layer's statistics while its weights are loaded.

    ``reduce`` (for distributed runs) sums the raw statistics of every layer, and the token count,
    across processes before they are normalised: each process then yields the global statistics.
    """
    if not units:
        raise NoQuantizableUnits(NO_UNITS_FIX)
    types = getattr(getattr(model, "config", None), "layer_types", None)
    if types is not None and len(set(types)) > 1:
        raise InvalidInput(
            f"the model mixes attention types {sorted(set(types))} across layers, and streaming reuses the "
            "first layer's attention mask for all: use calibrate() (whole-model hooks) for this model"
        )
    source = source or InMemory()
    device = torch.device(device)
    prefix, layers = decoder_layers(model, units)
    per_layer = _units_by_layer(prefix, len(layers), units)
    n_tokens = torch.tensor([windows.numel()], dtype=torch.float64, device=device)  # NCCL reduces GPU tensors
    if reduce is not None:
        reduce([n_tokens])
    total = int(n_tokens.item())
    with torch.no_grad():  # not inference_mode: the sums must stay ordinary tensors
        batches = capture_layer_inputs(model, layers[0], windows, batch_size, device)
        for index, layer in enumerate(layers):
            source.load(index, layer)
            sums = HessianSums(model, per_layer[index])
            try:
                for i, (hidden, kwargs) in enumerate(batches):
                    out = layer(hidden, **kwargs)
                    sums.end_batch()
                    batches[i] = (out[0] if isinstance(out, tuple) else out, kwargs)  # (b, seq, d)
            finally:
                sums.remove()
            if per_layer[index]:
                if reduce is not None:
                    sums.check_reached(per_layer[index])
                    reduce(sums.distinct())
                hessians, abs_means = sums.stats_for(per_layer[index], total)
                yield LayerStats(index, layer, per_layer[index], hessians, abs_means, total, len(layers))
            source.unload(index, layer)


def calibrate_streaming(
    model: nn.Module,
    units: tuple[Unit, ...],
    windows: torch.Tensor,
    *,
    model_hash: str,
    corpus_hash: str,
    batch_size: int = 4,
    settings: dict | None = None,
    source: LayerSource | None = None,
    device: torch.device | str | None = None,
    reduce: Reduce | None = None,
    on_layer: Callable[[int, int], None] | None = None,
) -> CalibrationStats:
    """The same CalibrationStats as ``calibrate``, computed one decoder layer at a time."""
    if device is None:
        device = next((p.device for p in model.parameters() if p.device.type != "meta"), "cpu")
    hessians: dict[str, torch.Tensor] = {}
    abs_means: dict[str, torch.Tensor] = {}
    n_tokens = windows.numel()
    for done in stream_layers(
        model, units, windows, batch_size=batch_size, source=source, device=device, reduce=reduce
    ):
        hessians.update(done.hessians)
        abs_means.update(done.abs_means)
        n_tokens = done.n_tokens
        if on_layer is not None:
            on_layer(done.index + 1, done.n_layers)
    return CalibrationStats(
        hessians={u.name: hessians[u.name] for u in units},
        n_tokens=n_tokens,
        model_hash=model_hash,
        corpus_hash=corpus_hash,
        settings=dict(settings or {}),
        abs_means={u.name: abs_means[u.name] for u in units},
    )
