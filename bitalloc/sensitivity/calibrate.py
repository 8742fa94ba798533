"""Calibration: accumulate H = XᵀX / n for the input of every unit in one streaming pass.

Memory is bounded by the Hessians themselves (one (in, in) float32 matrix per distinct input):
batches stream through the model and are folded into the sums as they pass. Units that read the
same input tensor (q/k/v, gate/up) share one Hessian object.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import torch
from torch import nn

from bitalloc.errors import InvalidInput, ProfileMismatch
from bitalloc.models.units import Unit

ABS_MEAN_PREFIX = "absmean::"  # safetensors key prefix of the optional activation means


@dataclass(frozen=True, eq=False)
class CalibrationStats:
    """Per-unit Hessian proxies H = XᵀX / n_tokens, (in, in) float32; shared inputs share one tensor.

    ``abs_means`` (optional, absent in files written before it existed): per-unit mean |x| of each
    input channel, (in,) float32, the activation salience that AWQ scales by.
    """

    hessians: dict[str, torch.Tensor]
    n_tokens: int
    model_hash: str
    corpus_hash: str
    settings: dict = field(default_factory=dict)
    abs_means: dict[str, torch.Tensor] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        """Write a safetensors file; shared Hessians are stored once."""
        from safetensors.torch import save_file

        tensors, alias = {}, {}
        first_name: dict[int, str] = {}
        for name, h in self.hessians.items():
            key = first_name.setdefault(id(h), name)
            alias[name] = key
            if key == name:
                tensors[name] = h.contiguous().cpu()
                if name in self.abs_means:
                    tensors[ABS_MEAN_PREFIX + name] = self.abs_means[name].contiguous().cpu()
        meta = {
            "n_tokens": str(self.n_tokens),
            "model_hash": self.model_hash,
            "corpus_hash": self.corpus_hash,
            "alias": repr(sorted(alias.items())),
            "settings": repr(sorted(self.settings.items())),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, *, model_hash: str | None = None) -> CalibrationStats:
        """Read a file written by ``save``; refuse it if it was made for another model."""
        import ast

        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            stored = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
        if model_hash is not None and meta["model_hash"] != model_hash:
            raise ProfileMismatch(
                f"{path} holds statistics of model {meta['model_hash'][:12]}, not {model_hash[:12]}"
            )
        alias = dict(ast.literal_eval(meta["alias"]))
        abs_means = {
            n: stored[ABS_MEAN_PREFIX + k] for n, k in alias.items() if ABS_MEAN_PREFIX + k in stored
        }
        return cls(
            hessians={name: stored[key] for name, key in alias.items()},
            n_tokens=int(meta["n_tokens"]),
            model_hash=meta["model_hash"],
            corpus_hash=meta["corpus_hash"],
            settings=dict(ast.literal_eval(meta["settings"])),
            abs_means=abs_means,
        )


class NoQuantizableUnits(InvalidInput):
    """Calibration or profiling was asked of a model with no quantizable units."""


class NonFiniteActivations(InvalidInput):
    """NaN or infinite activations reach a unit during calibration."""


NO_UNITS_FIX = (
    "the model has no quantizable units to calibrate: bitalloc quantizes nn.Linear layers outside the "
    "embeddings and LM head (and MoE experts via discover_moe_units); pass a transformer with such layers, "
    "or a narrower exclude pattern to discover_units"
)


class HessianSums:
    """Forward pre-hooks adding XᵀX and Σ|x| of each unit's input; units reading one tensor share a sum.

    The sums are raw (not divided by the token count) so that they can be reduced across processes
    before ``stats_for`` normalises them. Call ``end_batch`` after every forward.
    """

    def __init__(self, root: nn.Module, units: tuple[Unit, ...]) -> None:
        self.sums: dict[str, torch.Tensor] = {}  # distinct input -> (in, in) float32
        self.abs_sums: dict[str, torch.Tensor] = {}  # distinct input -> (in,) float32
        self.alias: dict[str, str] = {}  # unit -> the unit whose sum it shares
        self._last: dict[str, object] = {"input": None, "name": None}
        self._handles = [
            root.get_submodule(u.name).register_forward_pre_hook(self._hook(u.name)) for u in units
        ]

    def _hook(self, name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0]
            if x is self._last["input"]:  # same tensor as the previous unit: share its Hessian
                self.alias[name] = self.alias[self._last["name"]]  # type: ignore[index]
                return
            self._last["input"], self._last["name"] = x, name
            self.alias.setdefault(name, name)
            flat = x.detach().reshape(-1, x.shape[-1]).float()  # (tokens, in)
            h = self.sums.get(name)
            if h is None:
                h = self.sums[name] = torch.zeros(flat.shape[1], flat.shape[1], device=flat.device)
            add_upper_gram(h, flat)
            if name in self.abs_sums:
                self.abs_sums[name].add_(flat.abs().sum(dim=0))
            else:
                self.abs_sums[name] = flat.abs().sum(dim=0)  # (in,)

        return hook

    def end_batch(self) -> None:
        """Forget the last input seen (a new forward starts)."""
        self._last["input"] = self._last["name"] = None

    def remove(self) -> None:
        """Detach the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def distinct(self) -> list[torch.Tensor]:
        """Every raw sum once, in a fixed order (sorted input names): what a reduction must sum."""
        return [t for k in sorted(self.sums) for t in (self.sums[k], self.abs_sums[k])]

    def check_reached(self, units: tuple[Unit, ...]) -> None:
        """Raise InvalidInput if a unit never saw an input."""
        missing = [u.name for u in units if u.name not in self.alias]
        if missing:
            raise InvalidInput(
                f"calibration never reached units {missing[:3]}...; is the model's forward complete?"
            )

    def stats_for(self, units: tuple[Unit, ...], n_tokens: int) -> tuple[dict, dict]:
        """(hessians, abs_means) of ``units``, sums mirrored to full symmetric matrices and divided by
        ``n_tokens`` in place, sharing kept; NonFiniteActivations names the first unit that saw NaN/inf."""
        self.check_reached(units)
        keys = list(dict.fromkeys(self.alias[u.name] for u in units))  # forward order
        finite = torch.stack([torch.isfinite(self.abs_sums[k]).all() for k in keys]).tolist()  # one sync
        if not all(finite):
            name = next(u.name for u in units if not finite[keys.index(self.alias[u.name])])
            raise NonFiniteActivations(
                f"non-finite activations reach unit {name!r}: the model's weights or an earlier layer "
                "hold NaN/inf, or the dtype overflows; check the checkpoint (load it in float32)"
            )
        for key in keys:
            mirror_upper(self.sums[key]).div_(n_tokens)
            self.abs_sums[key].div_(n_tokens)
        hessians = {u.name: self.sums[self.alias[u.name]] for u in units}
        return hessians, {u.name: self.abs_sums[self.alias[u.name]] for u in units}


GRAM_PANEL = 256  # narrowest row panel of the triangular XᵀX update


def gram_panels(n: int) -> list[tuple[int, int]]:
    """Row panels ``[i0, i1)`` of an (n, n) Gram matrix: one below 512 inputs, up to four above."""
    count = max(1, min(4, n // GRAM_PANEL))
    bounds = [n * k // count for k in range(count + 1)]
    return list(pairwise(bounds))


def add_upper_gram(h: torch.Tensor, x: torch.Tensor) -> None:
    """``h += xᵀx`` on the diagonal blocks and above them only, x (tokens, n), h (n, n): with four
    panels 62.5 % of the multiply-adds of a full product; ``mirror_upper`` completes h."""
    for i0, i1 in gram_panels(h.shape[0]):
        h[i0:i1, i0:].addmm_(x[:, i0:i1].T, x[:, i0:])  # (panel, n - i0)


def mirror_upper(h: torch.Tensor) -> torch.Tensor:
    """Copy the upper triangle of ``h`` onto its lower one in place (the sums ``add_upper_gram`` left)."""
    if len(gram_panels(h.shape[0])) > 1:
        h.copy_(torch.triu(h) + torch.triu(h, 1).T)
    return h


def calibrate(
    model: nn.Module,
    units: tuple[Unit, ...],
    windows: torch.Tensor,
    *,
    model_hash: str,
    corpus_hash: str,
    batch_size: int = 4,
    settings: dict | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> CalibrationStats:
    """Run ``windows`` (n, seq_len) through ``model`` and return the per-unit Hessians."""
    if not units:
        raise NoQuantizableUnits(NO_UNITS_FIX)
    device = next(model.parameters()).device
    sums = HessianSums(model, units)
    n_tokens = 0
    try:
        with torch.no_grad():  # not inference_mode: the sums must stay ordinary tensors
            for start in range(0, windows.shape[0], batch_size):
                batch = windows[start : start + batch_size].to(device)  # (b, seq_len)
                model(input_ids=batch, use_cache=False)
                sums.end_batch()
                n_tokens += batch.numel()
                if on_batch is not None:
                    on_batch(min(start + batch_size, windows.shape[0]), windows.shape[0])
    finally:
        sums.remove()
    hessians, abs_means = sums.stats_for(units, n_tokens)
    return CalibrationStats(
        hessians=hessians,
        n_tokens=n_tokens,
        model_hash=model_hash,
        corpus_hash=corpus_hash,
        settings=dict(settings or {}),
        abs_means=abs_means,
    )
