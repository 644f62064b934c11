"""Logits processors and sampling: HF semantics, per-row settings, seeded reproducibility."""

from __future__ import annotations

import pytest
import torch

from lmforge.infer.sampling import (
    RowParams,
    SamplingConfig,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    make_generator,
    process_logits,
    sample_next,
)


def _params(*configs: SamplingConfig) -> RowParams:
    return RowParams.from_configs(list(configs), "cpu")


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, -1.0]]


def test_repetition_penalty_matches_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    logits = torch.randn(2, 50)
    context = torch.tensor([[3, 7, 7, 10], [0, 1, 49, 20]])
    seen = torch.zeros(2, 50, dtype=torch.bool).scatter(1, context, True)
    expected = RepetitionPenaltyLogitsProcessor(1.3)(context, logits.clone())
    torch.testing.assert_close(apply_repetition_penalty(logits, seen, 1.3), expected)


@pytest.mark.parametrize("k", [1, 5, 49])
def test_top_k_matches_transformers(k):
    from transformers.generation.logits_process import TopKLogitsWarper

    logits = torch.randn(3, 50)
    expected = TopKLogitsWarper(k)(None, logits.clone())
    out = apply_top_k(logits, k)
    assert torch.equal(torch.isinf(out), torch.isinf(expected))
    assert (~torch.isinf(out)).sum(-1).tolist() == [k] * 3


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.99])
def test_top_p_matches_transformers(p):
    from transformers.generation.logits_process import TopPLogitsWarper

    logits = torch.randn(4, 64) * 3
    expected = TopPLogitsWarper(p)(None, logits.clone())
    out = apply_top_p(logits, p)
    assert torch.equal(torch.isinf(out), torch.isinf(expected))


def test_top_p_keeps_smallest_set_reaching_p_and_always_the_top_token():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = ~torch.isinf(apply_top_p(probs.log(), 0.75))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.75 <= 0.8
    kept = ~torch.isinf(apply_top_p(probs.log(), 0.01))
    assert kept.tolist() == [[True, False, False, False]]


def test_per_row_settings_apply_to_their_row_only():
    logits = torch.randn(3, 40)
    params = _params(
        SamplingConfig(temperature=1.0, top_k=2),
        SamplingConfig(temperature=1.0),
        SamplingConfig(temperature=0.5, top_p=0.5),
    )
    out = process_logits(logits, params, seen=None)
    assert (~torch.isinf(out[0])).sum() == 2
    torch.testing.assert_close(out[1], logits[1])
    torch.testing.assert_close(out[2], apply_top_p(logits[2:3] / 0.5, 0.5)[0])


def test_top_k_1_equals_greedy():
    logits = torch.randn(4, 100)
    params = _params(*[SamplingConfig(temperature=1.5, top_k=1)] * 4)
    gens = [make_generator(i, "cpu") for i in range(4)]
    assert torch.equal(sample_next(logits, params, None, gens), logits.argmax(-1))


def test_greedy_applies_repetition_penalty():
    logits = torch.tensor([[3.0, 2.9, 0.0]])
    seen = torch.tensor([[True, False, False]])
    params = _params(SamplingConfig(temperature=0, repetition_penalty=1.2))
    assert sample_next(logits, params, seen, [make_generator(0, "cpu")]).tolist() == [1]


def test_seeded_sampling_is_reproducible_and_independent_of_batch_neighbours():
    logits = torch.randn(3, 1000)
    cfg = SamplingConfig(temperature=1.0, seed=7)

    def draw(rows, seeds, steps=20):
        params = _params(*[cfg] * len(rows))
        gens = [make_generator(s, "cpu") for s in seeds]
        return [sample_next(logits[rows], params, None, gens).tolist() for _ in range(steps)]

    first = draw([0, 1, 2], [7, 8, 9])
    assert first == draw([0, 1, 2], [7, 8, 9])
    alone = draw([1], [8])
    assert [step[1] for step in first] == [step[0] for step in alone]
    assert first != draw([0, 1, 2], [1, 2, 3])


def test_sampling_follows_the_distribution():
    logits = torch.tensor([[0.0, 0.0, -1e9, 2.0]])
    params = _params(SamplingConfig(temperature=1.0))
    gen = make_generator(0, "cpu")
    counts = torch.bincount(torch.stack([sample_next(logits, params, None, [gen]) for _ in range(2000)]).flatten(), minlength=4)
    assert counts[2] == 0
    # p = softmax([0, 0, 2]) = [0.107, 0.107, 0.787]; loose bounds, deterministic under the seed.
    assert 1400 < counts[3] < 1750 and counts[0] > 120 and counts[1] > 120


def test_draw_tokens_matches_multinomial_in_distribution_and_never_draws_zero_mass():
    from lmforge.infer.sampling import draw_tokens

    # A vocabulary-sized row with a top-k-like cut (zero mass at both ends) and a skewed head.
    probs = torch.zeros(1, 5000)
    probs[0, 1:-1] = torch.softmax(torch.randn(4998, generator=torch.Generator().manual_seed(3)) * 2, -1)
    gen = make_generator(11, "cpu")
    n = 20000
    draws = torch.cat([draw_tokens(probs.expand(50, -1), [gen] * 50) for _ in range(n // 50)])
    counts = torch.bincount(draws, minlength=5000).double()
    assert counts[0] == 0 and counts[-1] == 0
    # Pearson's chi-square over the 20 most likely tokens + the rest: df = 20, p < 1e-6 at 61.
    top = probs[0].argsort(descending=True)[:20]
    expected = torch.cat([probs[0, top], 1 - probs[0, top].sum(0, keepdim=True)]).double() * n
    observed = torch.cat([counts[top], n - counts[top].sum(0, keepdim=True)])
    assert ((observed - expected) ** 2 / expected).sum() < 61


def test_draw_tokens_with_all_mass_on_one_token_or_at_the_edges():
    from lmforge.infer.sampling import draw_tokens

    gens = [make_generator(s, "cpu") for s in range(3)]
    probs = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    for _ in range(200):
        tokens = draw_tokens(probs, gens).tolist()
        assert tokens[0] == 2 and tokens[1] == 0 and tokens[2] in (1, 2)


def test_a_row_without_valid_probabilities_is_an_error_not_an_out_of_vocabulary_token():
    from lmforge.infer.sampling import draw_tokens

    gens = [make_generator(s, "cpu") for s in range(3)]
    probs = torch.tensor([[0.5, 0.5, 0.0], [float("nan")] * 3, [0.0, 0.0, 0.0]])
    with pytest.raises(RuntimeError, match=r"row\(s\) \[1, 2\] have no valid probabilities"):
        draw_tokens(probs, gens)


@pytest.mark.parametrize(
    "kwargs",
    [dict(temperature=-1), dict(top_k=-1), dict(top_p=0), dict(top_p=1.5), dict(repetition_penalty=0), dict(max_new_tokens=0), dict(stop=[""])],
)
def test_sampling_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        SamplingConfig(**kwargs)
