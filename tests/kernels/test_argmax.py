from __future__ import annotations

import pytest
import torch

from bitalloc.kernels.argmax import argmax_row
from tests.kernels.helpers import device


@pytest.mark.parametrize("vocab", [1, 100, 32000, 70000])
def test_argmax_row_matches_torch_with_ties(vocab):
    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randn(1, vocab, generator=gen).half()
    top = logits.max()
    tied = torch.randperm(vocab, generator=gen)[:3]
    logits[0, tied] = top + 1  # three equal maxima (in other blocks for the large vocabularies): first wins
    out = torch.full((1,), -1, dtype=torch.long, device=device())
    argmax_row(logits.to(device()), out)
    assert out.item() == int(logits.argmax()) == int(tied.min())


def test_argmax_row_rejects_batches():
    with pytest.raises(ValueError, match="one row"):
        argmax_row(torch.zeros(2, 8, dtype=torch.float16), torch.zeros(1, dtype=torch.long))
