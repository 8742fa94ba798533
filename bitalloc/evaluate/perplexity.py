"""Perplexity and KL divergence with strided windows.

Windows of ``context`` tokens start every ``stride`` tokens; each window scores only the tokens that
no earlier window scored, so every scored token (but the first few) sees at least
``context - stride`` tokens of context. With the defaults (context 512, stride 256) each scored
token has 256 to 511 tokens before it. Several models are evaluated in lockstep so the reference
runs once per window, and KL(reference || model) is averaged over the same scored tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bitalloc.errors import InvalidInput


@dataclass(frozen=True)
class EvalResult:
    """Perplexity of one model, its mean KL to the reference (nats/token), and the tokens scored."""

    perplexity: float
    kl: float
    tokens: int


def strided_windows(n_tokens: int, *, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first scored position inside the window) for each window."""
    if not 0 < stride <= context:
        raise InvalidInput(f"need 0 < stride <= context, got stride {stride}, context {context}")
    if n_tokens < 2:
        raise InvalidInput("need at least 2 tokens to evaluate")
    windows, scored_until, start = [], 1, 0
    while scored_until < n_tokens:
        begin = min(start, scored_until - 1)  # at least one token of context before the first scored
        end = min(begin + context, n_tokens)
        windows.append((begin, end, scored_until - begin))
        scored_until = end
        start += stride
    return windows


def evaluate_models(
    models: Mapping[str, nn.Module],
    reference: nn.Module,
    tokens: torch.Tensor,
    *,
    context: int = 512,
    stride: int = 256,
    batch_size: int = 4,
    on_window: Callable[[int, int], None] | None = None,
) -> dict[str, EvalResult]:
    """Perplexity and KL to ``reference`` of every model (and of the reference, as 'reference')."""
    device = next(reference.parameters()).device
    names = ["reference", *models]
    nll = dict.fromkeys(names, 0.0)
    kl = dict.fromkeys(names, 0.0)
    count = 0
    windows = strided_windows(tokens.numel(), context=context, stride=stride)
    batches = [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]
    done = 0
    with torch.inference_mode():
        for batch in batches:
            # windows of one batch share a length except possibly the last: split it off
            for group in _same_length(batch):
                ids = torch.stack([tokens[s:e] for s, e, _ in group]).to(device)  # (b, t)
                firsts = [f for _, _, f in group]
                targets = torch.cat([ids[r, f:] for r, f in enumerate(firsts)])  # (scored,)
                ref_logp = _log_probs(reference, ids, firsts)  # (scored, vocab)
                for name in names:
                    logp = ref_logp if name == "reference" else _log_probs(models[name], ids, firsts)
                    nll[name] -= float(logp.gather(1, targets[:, None]).sum(dtype=torch.float64))
                    kl[name] += float((ref_logp.exp() * (ref_logp - logp)).sum(dtype=torch.float64))
                count += targets.numel()
            done += len(batch)
            if on_window is not None:
                on_window(done, len(windows))
    return {n: EvalResult(perplexity=math.exp(nll[n] / count), kl=kl[n] / count, tokens=count) for n in names}


def _same_length(windows: list[tuple[int, int, int]]) -> list[list[tuple[int, int, int]]]:
    """Split windows into runs of equal length, keeping their order."""
    groups: list[list[tuple[int, int, int]]] = []
    for w in windows:
        if groups and groups[-1][0][1] - groups[-1][0][0] == w[1] - w[0]:
            groups[-1].append(w)
        else:
            groups.append([w])
    return groups


def _log_probs(model: nn.Module, ids: torch.Tensor, firsts: list[int]) -> torch.Tensor:
    """Log-probabilities of the scored tokens of each row of ``ids`` (b, t): (scored, vocab) float32."""
    logits = model(input_ids=ids, use_cache=False).logits  # (b, t, vocab)
    rows = [logits[r, f - 1 : -1] for r, f in enumerate(firsts)]
    return F.log_softmax(torch.cat(rows).float(), dim=-1)
