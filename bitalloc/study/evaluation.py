"""Perplexity and KL of trial models against a reference whose log-probabilities are computed once.

``bitalloc.evaluate.perplexity.evaluate_models`` runs the float reference beside every model it scores;
a study scores one model per trial on the same tokens, so a worker keeps the reference's log-probabilities
(float32, scored tokens x vocabulary: 0.8 GB for 4096 tokens of SmolLM2) and runs only the trial model.
Windows, batches and sums follow ``evaluate_models`` exactly, so the numbers are the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from bitalloc.evaluate.perplexity import EvalResult, strided_windows

BATCH = 4  # windows per forward, as evaluate_models


def _groups(n_tokens: int, context: int, stride: int) -> list[list[tuple[int, int, int]]]:
    """Windows in batches of BATCH, each batch split into runs of equal length (evaluate_models' order)."""
    windows = strided_windows(n_tokens, context=context, stride=stride)
    out: list[list[tuple[int, int, int]]] = []
    for i in range(0, len(windows), BATCH):
        batch: list[list[tuple[int, int, int]]] = []
        for w in windows[i : i + BATCH]:
            if batch and batch[-1][0][1] - batch[-1][0][0] == w[1] - w[0]:
                batch[-1].append(w)
            else:
                batch.append([w])
        out += batch
    return out


def _log_probs(model: nn.Module, ids: torch.Tensor, firsts: list[int]) -> torch.Tensor:
    """(scored, vocab) float32 log-probabilities of the scored tokens of each row of ``ids`` (b, t)."""
    logits = model(input_ids=ids, use_cache=False).logits  # (b, t, vocab)
    rows = [logits[r, f - 1 : -1] for r, f in enumerate(firsts)]
    return F.log_softmax(torch.cat(rows).float(), dim=-1)


@dataclass
class ReferenceEval:
    """The reference model's log-probabilities on ``tokens``, computed on first use, then reused."""

    reference: nn.Module
    tokens: torch.Tensor  # (n,) token ids
    context: int = 512
    stride: int = 256
    _cached: list[tuple[torch.Tensor, ...]] = field(default_factory=list, repr=False)

    def _batches(self) -> list[tuple[torch.Tensor, ...]]:
        """(ids (b, t), targets (scored,), firsts (b,), reference log-probs (scored, vocab)) per batch."""
        if not self._cached:
            device = next(self.reference.parameters()).device
            with torch.inference_mode():
                for group in _groups(self.tokens.numel(), self.context, self.stride):
                    ids = torch.stack([self.tokens[s:e] for s, e, _ in group]).to(device)  # (b, t)
                    firsts = [f for _, _, f in group]
                    targets = torch.cat([ids[r, f:] for r, f in enumerate(firsts)])  # (scored,)
                    firsts_t = torch.tensor(firsts)
                    self._cached.append((ids, targets, firsts_t, _log_probs(self.reference, ids, firsts)))
        return self._cached

    def evaluate(self, model: nn.Module | None = None) -> EvalResult:
        """Perplexity and mean KL(reference || model) of ``model`` (the reference itself when None)."""
        nll = kl = 0.0
        count = 0
        with torch.inference_mode():
            for ids, targets, firsts, ref_logp in self._batches():
                logp = ref_logp if model is None else _log_probs(model, ids, firsts.tolist())
                nll -= float(logp.gather(1, targets[:, None]).sum(dtype=torch.float64))
                kl += float((ref_logp.exp() * (ref_logp - logp)).sum(dtype=torch.float64))
                count += targets.numel()
        return EvalResult(perplexity=math.exp(nll / count), kl=kl / count, tokens=count)
