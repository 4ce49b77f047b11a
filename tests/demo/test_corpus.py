"""Tests of `tideflow.demo.corpus`: the standard-library corpus split and the perplexity helper."""

from __future__ import annotations

import math

import pytest
import torch

from tideflow.demo import corpus


def test_split_is_disjoint_deterministic_and_skips_tests_and_codecs():
    train, heldout = corpus.stdlib_files("train"), corpus.stdlib_files("heldout")
    root = corpus.stdlib_root()
    relative = {p.relative_to(root).as_posix() for p in train} | {p.relative_to(root).as_posix() for p in heldout}
    assert heldout and len(train) > 10 * len(heldout)
    assert not set(train) & set(heldout)
    assert corpus.stdlib_files("heldout") == heldout  # the same files, in the same order
    assert all(corpus.is_heldout(p.relative_to(root).as_posix()) for p in heldout)
    assert "os.py" in relative and "json/decoder.py" in relative
    assert not [r for r in relative if {"test", "tests", "encodings"} & set(r.split("/")[:-1])]


def test_split_of_a_given_root(tmp_path):
    for name in ("a.py", "pkg/b.py", "test/c.py", "d.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    both = corpus.stdlib_files("train", tmp_path) + corpus.stdlib_files("heldout", tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in both) == ["a.py", "pkg/b.py"]


def test_bad_split_and_root_raise():
    with pytest.raises(ValueError, match="split must be one of"):
        corpus.stdlib_files("validation")
    with pytest.raises(ValueError, match="is not a directory"):
        corpus.stdlib_files("train", "/no/such/dir")


def test_read_documents_stops_at_max_chars(tmp_path):
    files = []
    for i in range(3):
        files.append(tmp_path / f"{i}.py")
        files[-1].write_text(str(i) * 10)
    assert corpus.read_documents(files, max_chars=25) == ["0" * 10, "1" * 10, "2" * 5]
    assert corpus.read_documents(files) == ["0" * 10, "1" * 10, "2" * 10]


class _FixedLogits(torch.nn.Module):
    """A stand-in LM whose next-token logits are the same `logits` at every position."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1))


def test_perplexity_of_known_distributions():
    ids = [0, 1, 2, 3] * 10
    assert corpus.perplexity(_FixedLogits(torch.zeros(8)), ids, seq_len=4) == pytest.approx(8.0)
    # p = 1/2 on each of tokens 0..3 would not sum to one; use p(t) = softmax(log w)[t] instead
    weights = torch.tensor([4.0, 2.0, 1.0, 1.0])
    model = _FixedLogits(weights.log())
    # windows of 4 score tokens 1, 2, 3 (token 0 only ever starts a window): p = 2/8, 1/8, 1/8
    expected = math.exp(-(math.log(2 / 8) + 2 * math.log(1 / 8)) / 3)
    assert corpus.perplexity(model, ids, seq_len=4, max_windows=3) == pytest.approx(expected)


def test_perplexity_rejects_too_little_text():
    model = _FixedLogits(torch.zeros(8))
    with pytest.raises(ValueError, match="fewer than one window of seq_len=16"):
        corpus.perplexity(model, [1, 2, 3], seq_len=16)
    with pytest.raises(ValueError, match="seq_len must be at least 2"):
        corpus.perplexity(model, [1, 2, 3], seq_len=1)
