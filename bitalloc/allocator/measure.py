"""Measure plans on a real model: KL(float model || quantized model) on token windows, many plans at once.

The closed loop (closed_loop.py) needs the real loss of a few dozen plans. Building each quantized
model would quantize every unit again; instead each (unit, candidate) weight is quantized once,
dequantized and cached, and one working copy of the model has its units' weights swapped in per plan.
Per batch of windows the float model runs once and every plan is scored against it. The dequantized
weights are exactly what QuantLinear multiplies by, so the KL equals that of ``apply_plan``'s model.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bitalloc.errors import InvalidInput
from bitalloc.models.units import get_submodule_parent
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.quantize import quantize


@dataclass(frozen=True, eq=False)
class PlanKL:
    """A ``closed_loop`` measure: mean KL in nats per token of each plan on ``windows``.

    model:      the float reference (left untouched; a private copy is quantized)
    units:      the problem's unit names (Linear modules of ``model``), in problem order
    candidates: the problem's candidate names, in problem order
    windows:    (n, seq_len) int64 token windows; the next-token distribution at every position but
                the last of each window is scored
    hessians:   unit -> (in, in) input Hessian, needed by GPTQ candidates
    keep_reference: windows up to which the float model's log-probabilities are kept between calls
                (each window holds seq_len x vocab float32: 100 MB for 512 x 49152)
    """

    model: nn.Module
    units: tuple[str, ...]
    candidates: tuple[str, ...]
    windows: torch.Tensor
    hessians: dict[str, torch.Tensor] | None = None
    batch_size: int = 2
    keep_reference: int = 4
    _cache: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, repr=False)
    _reference: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.windows.dim() != 2 or self.windows.shape[1] < 2:
            raise InvalidInput(f"windows must be (n, seq_len >= 2) tokens, got {tuple(self.windows.shape)}")
        for unit in self.units:
            parent, leaf = get_submodule_parent(self.model, unit)
            if not isinstance(getattr(parent, leaf), nn.Linear):
                raise InvalidInput(f"unit {unit!r} is not a Linear of this model")

    def weight(self, unit: int, candidate: int) -> torch.Tensor:
        """The dequantized (out, in) weight of one unit under one candidate (quantized once, cached)."""
        key = (unit, candidate)
        if key not in self._cache:
            name = self.units[unit]
            parent, leaf = get_submodule_parent(self.model, name)
            w = getattr(parent, leaf).weight.detach().float()  # (out, in)
            h = None if self.hessians is None else self.hessians.get(name)
            q = quantize(w, Candidate.parse(self.candidates[candidate]), hessian=h, unit=name)
            self._cache[key] = q.dequantize(w.dtype).to(getattr(parent, leaf).weight.dtype)
        return self._cache[key]

    def quantized_copy(self, choice: np.ndarray) -> nn.Module:
        """A copy of the model with one plan's dequantized weights in place (for evaluation elsewhere)."""
        self._check([choice])
        work = copy.deepcopy(self.model)
        for u, k in enumerate(np.asarray(choice, dtype=np.int64)):
            getattr(*get_submodule_parent(work, self.units[u])).weight.data = self.weight(u, int(k))
        return work

    def _check(self, choices: Sequence[np.ndarray]) -> None:
        for c in choices:
            c = np.asarray(c)
            if c.shape != (len(self.units),) or (c < 0).any() or (c >= len(self.candidates)).any():
                raise InvalidInput(
                    f"a plan choice must be {len(self.units)} candidate indices, got {c.shape}"
                )

    def __call__(self, choices: Sequence[np.ndarray]) -> np.ndarray:
        """(plans,) mean KL per scored token of each per-unit choice (indices into ``candidates``)."""
        self._check(choices)
        choices = [np.asarray(c, dtype=np.int64) for c in choices]
        work = copy.deepcopy(self.model)
        linears = [getattr(*get_submodule_parent(work, u)) for u in self.units]
        plans = [[self.weight(u, int(k)) for u, k in enumerate(c)] for c in choices]
        kl = np.zeros(len(choices))
        count = 0
        with torch.inference_mode():
            for start in range(0, self.windows.shape[0], self.batch_size):
                ids = self.windows[start : start + self.batch_size].to(next(work.parameters()).device)
                ref = self._reference.get(start)
                if ref is None:
                    ref = _log_probs(self.model, ids)  # (b * (t - 1), vocab)
                    if start + len(ids) <= self.keep_reference:
                        self._reference[start] = ref
                p_ref = ref.exp()
                for i, weights in enumerate(plans):
                    for linear, w in zip(linears, weights, strict=True):
                        linear.weight.data = w
                    logp = _log_probs(work, ids)
                    kl[i] += float((p_ref * (ref - logp)).sum(dtype=torch.float64))
                count += ref.shape[0]
        return kl / count


def _log_probs(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Next-token log-probabilities at every position but the last of each row: (b * (t - 1), vocab)."""
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1]  # (b, t - 1, vocab)
    return F.log_softmax(logits.float(), dim=-1).reshape(-1, logits.shape[-1])
