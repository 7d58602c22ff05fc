"""Attention entropy on known patterns: uniform → log n, one-hot → 0, and the head flags."""

import math

import pytest
import torch

from peftkit.evaluate.attention import flag_heads, head_entropies, most_changed, row_entropy


def test_row_entropy_uniform_is_log_n_and_one_hot_is_zero():
    for n in (2, 7, 50):
        assert row_entropy(torch.full((n,), 1.0 / n)).item() == pytest.approx(math.log(n), rel=1e-6)
    one_hot = torch.zeros(9)
    one_hot[3] = 1.0
    assert row_entropy(one_hot).item() == pytest.approx(0.0, abs=1e-6)
    # hand computed: p = (0.5, 0.25, 0.25) → 0.5 ln 2 + 2 · 0.25 ln 4 = 1.5 ln 2
    assert row_entropy(torch.tensor([0.5, 0.25, 0.25])).item() == pytest.approx(1.5 * math.log(2), rel=1e-6)


def _causal_uniform(n: int) -> torch.Tensor:
    """[queries, keys]: row i spreads evenly over keys 0..i."""
    return torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1).unsqueeze(1)


def test_head_entropies_causal_uniform_sink_and_encoder_uniform():
    n = 6
    sink = torch.zeros(n, n)
    sink[:, 0] = 1.0  # every query attends only to the first token (an attention sink)
    attn = torch.stack([_causal_uniform(n), sink])  # [heads=2, q, k]
    out = head_entropies(attn, causal=True)
    # rows 1..5 see 2..6 keys; row 0 sees one key and is skipped
    expected = sum(math.log(i + 1) for i in range(1, n)) / (n - 1)
    assert out["entropy"][0].item() == pytest.approx(expected, rel=1e-5)
    assert out["normalised"][0].item() == pytest.approx(1.0, rel=1e-5)
    assert out["entropy"][1].item() == pytest.approx(0.0, abs=1e-6)
    enc = head_entropies(torch.full((1, n, n), 1.0 / n), causal=False)
    assert enc["entropy"][0].item() == pytest.approx(math.log(n), rel=1e-6)


def test_flags_and_most_changed():
    flags = flag_heads([[0.02, 0.5], [0.95, 0.1]])
    assert [(h["layer"], h["head"]) for h in flags["collapsed"]] == [(0, 0), (1, 1)]
    assert [(h["layer"], h["head"]) for h in flags["diffuse"]] == [(1, 0)]
    changed = most_changed([[1.0, 2.0], [3.0, 0.5]], [[1.1, 0.5], [3.0, 1.0]], top=2)
    assert [(c["layer"], c["head"]) for c in changed] == [(0, 1), (1, 1)]
    assert changed[0]["change"] == pytest.approx(-1.5)
