from __future__ import annotations

import pytest
import torch

from bitalloc.data.corpora import Split, is_wiki_evaluation, load_corpus
from bitalloc.data.windows import calibration_windows, token_stream
from bitalloc.errors import CorpusTooShort, InvalidInput


def test_wiki_split_is_deterministic_disjoint_and_complete():
    cal = load_corpus("wiki", Split.CALIBRATION)
    ev = load_corpus("wiki", "evaluation")
    assert not set(cal.documents) & set(ev.documents)
    assert 0.05 < len(ev.documents) / (len(cal.documents) + len(ev.documents)) < 0.15
    assert len(cal.documents) + len(ev.documents) > 9_000
    assert load_corpus("wiki", Split.EVALUATION).content_hash == ev.content_hash
    assert cal.content_hash != ev.content_hash


def test_split_rule_is_the_documented_hash():
    import hashlib

    title = "Alan Turing"
    assert is_wiki_evaluation(title) == (int(hashlib.sha256(title.encode()).hexdigest()[:8], 16) % 10 == 0)


def test_shakespeare_is_evaluation_only():
    plays = load_corpus("shakespeare", Split.EVALUATION)
    assert len(plays.documents) >= 30 and "HAMLET" in "".join(plays.documents)
    with pytest.raises(InvalidInput, match="calibrate on"):
        load_corpus("shakespeare", Split.CALIBRATION)


def test_user_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("\n\n".join(f"Paragraph number {i} about things." for i in range(20)))
    cal, ev = load_corpus(str(path), "calibration"), load_corpus(str(path), "evaluation")
    assert len(cal.documents) == 18 and len(ev.documents) == 2
    assert not set(cal.documents) & set(ev.documents)


def test_unknown_corpus_names_the_choices():
    with pytest.raises(InvalidInput, match="wiki"):
        load_corpus("no-such-corpus", "calibration")


def test_windows_are_seeded_and_shaped(smollm2_small):
    cal = load_corpus("wiki", Split.CALIBRATION)
    a = calibration_windows(smollm2_small.tokenizer, cal, n_windows=3, seq_len=64, seed=1)
    b = calibration_windows(smollm2_small.tokenizer, cal, n_windows=3, seq_len=64, seed=1)
    c = calibration_windows(smollm2_small.tokenizer, cal, n_windows=3, seq_len=64, seed=2)
    assert a.shape == (3, 64) and a.dtype == torch.int64
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_too_short_corpus_says_how_many_windows_fit(tmp_path, smollm2_small):
    path = tmp_path / "tiny.txt"
    path.write_text("one short line.\n\nanother short line.\n\nthird.")
    corpus = load_corpus(str(path), "calibration")
    n = token_stream(smollm2_small.tokenizer, corpus).numel()
    with pytest.raises(CorpusTooShort, match=f"at most {n // 4} windows"):
        calibration_windows(smollm2_small.tokenizer, corpus, n_windows=100, seq_len=4, seed=0)
