"""Token windows: fixed-length calibration batches drawn with a seed, and evaluation streams."""

from __future__ import annotations

import random

import torch

from bitalloc.data.corpora import Corpus
from bitalloc.errors import CorpusTooShort, InvalidInput


def _separator(tokenizer) -> list[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    return [eos] if eos is not None else []


def token_stream(
    tokenizer, corpus: Corpus, *, max_tokens: int | None = None, seed: int | None = None
) -> torch.Tensor:
    """The corpus tokenized as one stream, documents separated by EOS: (tokens,) int64.

    With a seed the documents are shuffled first; tokenizing stops once ``max_tokens`` are reached.
    """
    order = list(range(len(corpus.documents)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    ids: list[int] = []
    sep = _separator(tokenizer)
    for i in order:
        ids.extend(tokenizer(corpus.documents[i], add_special_tokens=False)["input_ids"])
        ids.extend(sep)
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    stream = torch.tensor(ids, dtype=torch.int64)
    return stream if max_tokens is None else stream[:max_tokens]


def calibration_windows(
    tokenizer, corpus: Corpus, *, n_windows: int, seq_len: int, seed: int
) -> torch.Tensor:
    """``n_windows`` non-overlapping windows of ``seq_len`` tokens from a seeded shuffle: (n, seq_len)."""
    if n_windows < 1 or seq_len < 2:
        raise InvalidInput(f"need n_windows >= 1 and seq_len >= 2, got {n_windows} and {seq_len}")
    needed = n_windows * seq_len
    stream = token_stream(tokenizer, corpus, max_tokens=needed, seed=seed)
    if stream.numel() < needed:
        most = stream.numel() // seq_len
        raise CorpusTooShort(
            f"corpus {corpus.name!r} ({corpus.split.value}) has {stream.numel()} tokens, fewer than "
            f"{n_windows} windows x {seq_len} = {needed}; ask for at most {most} windows of {seq_len}"
        )
    return stream.view(n_windows, seq_len)
