"""``LoglikScorer`` against brute force: every number it returns is checked against one full,
unbatched, unpadded forward pass of the same model (sum of log-softmax at the scored positions,
argmax for ``is_greedy``), through each of its paths — sorted batches, the shared-context path
(one forward for one-token options, the KV cache for longer ones), duplicates, the prefix token
for an empty context, left truncation of over-long inputs, and rolling windows. The same numbers
come out for a peft-wrapped model and for ``transformers``' own model of the checkpoint."""

from __future__ import annotations

import random

import pytest
import torch

from lmforge.eval.scorer import LoglikScorer
from lmforge.model.hf import load_pretrained

TOL = 1e-4


@pytest.fixture(scope="module")
def model(eval_checkpoint):
    return load_pretrained(eval_checkpoint, device="cpu", dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer(eval_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(eval_checkpoint)


def _logprobs(model, ids: list[int]) -> torch.Tensor:
    """[len(ids), V] float64 log-softmax of one unpadded row, full logits."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    return logits.double().log_softmax(-1)


def brute_loglik(model, context: list[int], continuation: list[int], max_length: int, prefix: int) -> tuple[float, bool]:
    """lm-eval's definition: the row is (context or [prefix]) + continuation, cut to its last
    max_length + 1 tokens; the continuation is scored from the positions before each of its tokens."""
    row = ([*context] or [prefix]) + [*continuation]
    row = row[-(max_length + 1) :]
    logprobs = _logprobs(model, row[:-1])
    n = len(continuation)
    positions = range(len(row) - 1 - n, len(row) - 1)
    targets = row[-n:]
    total = sum(float(logprobs[p, t]) for p, t in zip(positions, targets))
    greedy = all(int(logprobs[p].argmax()) == t for p, t in zip(positions, targets))
    return total, greedy


def greedy_tokens(model, context: list[int], n: int) -> list[int]:
    """The model's own argmax continuation (so some requests have is_greedy == True)."""
    ids = list(context)
    for _ in range(n):
        ids.append(int(_logprobs(model, ids)[-1].argmax()))
    return ids[len(context) :]


def assert_results_match(got, expected, requests):
    assert len(got) == len(expected)
    for i, ((g_lp, g_greedy), (e_lp, e_greedy)) in enumerate(zip(got, expected)):
        assert abs(g_lp - e_lp) < TOL, (i, requests[i], g_lp, e_lp)
        assert g_greedy == e_greedy, (i, requests[i], g_greedy, e_greedy)


def mixed_requests(model, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Single- and multi-token continuations, shared contexts with one-token options (one forward)
    and with longer ones (the KV-cache path), unique contexts, duplicates, empty contexts, and
    greedy continuations."""
    rng = random.Random(seed)

    def ids(n):
        return [rng.randrange(7, 400) for _ in range(n)]

    shared_short = ids(12)  # four one-token options, like " A" ... " D"
    shared_long = ids(9)  # options of 1, 2, 4 tokens and a greedy one: the KV-cache path
    greedy_ctx = ids(6)
    requests = [(shared_short, [t]) for t in ids(4)]
    requests += [(shared_long, ids(1)), (shared_long, ids(2)), (shared_long, ids(4)), (shared_long, greedy_tokens(model, shared_long, 3))]
    requests += [(ids(n), ids(m)) for n, m in [(3, 1), (20, 5), (1, 2), (7, 7), (15, 1), (30, 3)]]
    requests += [(greedy_ctx, greedy_tokens(model, greedy_ctx, 4))]  # a unique context, greedy
    requests += [([], ids(3)), ([], ids(1))]  # empty contexts: the prefix token
    requests += [requests[0], requests[5], requests[9]]  # duplicates
    rng.shuffle(requests)
    return requests


def test_loglikelihood_equals_a_full_forward_for_every_kind_of_request(model, tokenizer):
    requests = mixed_requests(model)
    scorer = LoglikScorer(model, tokenizer, batch_size=7)
    assert scorer.prefix_token_id == tokenizer.eos_token_id  # no BOS in this tokenizer: EOS, as lm-eval
    got = scorer.loglikelihood(requests)
    expected = [brute_loglik(model, c, x, scorer.max_length, scorer.prefix_token_id) for c, x in requests]
    assert_results_match(got, expected, requests)
    assert any(g for _, g in expected) and not all(g for _, g in expected)  # both kinds of is_greedy tested
    # batch size changes nothing (sorting, padding and grouping are invisible)
    one = LoglikScorer(model, tokenizer, batch_size=1).loglikelihood(requests)
    assert all(abs(a[0] - b[0]) < TOL and a[1] == b[1] for a, b in zip(one, got))


def test_the_shared_context_paths_are_taken_and_agree_with_scoring_alone(model, tokenizer, monkeypatch):
    """Options of one question share their context: the scorer runs it once. Each option's result
    must equal the result for that request on its own (no sibling, plain path)."""
    calls = {"cache": 0, "pairs": 0}
    original_cache, original_pairs = LoglikScorer._continue_from_cache, LoglikScorer._score_pairs

    def count_cache(self, *args):
        calls["cache"] += 1
        yield from original_cache(self, *args)

    def count_pairs(self, pairs):
        calls["pairs"] += len(pairs)
        return original_pairs(self, pairs)

    monkeypatch.setattr(LoglikScorer, "_continue_from_cache", count_cache)
    monkeypatch.setattr(LoglikScorer, "_score_pairs", count_pairs)
    scorer = LoglikScorer(model, tokenizer, batch_size=4)
    context = list(range(40, 60))
    grouped = [(context, [101]), (context, [102, 103]), (context, [104, 105, 106, 107]), (list(range(70, 75)), [8]), (list(range(70, 75)), [9])]
    got = scorer.loglikelihood(grouped)
    assert calls == {"cache": 1, "pairs": 0}  # no request went the one-by-one way
    alone = [scorer.loglikelihood([r])[0] for r in grouped]
    assert calls["pairs"] == len(grouped)
    assert_results_match(got, alone, grouped)


def test_over_long_requests_lose_their_oldest_context_tokens(model, tokenizer):
    """max_length 16: each request is scored on its own row cut to the last 17 tokens, whatever
    other requests share its context (lm-eval truncates each request by itself)."""
    rng = random.Random(3)
    scorer = LoglikScorer(model, tokenizer, batch_size=3, max_length=16)
    long_ctx = [rng.randrange(7, 400) for _ in range(40)]
    requests = [
        (long_ctx, [11]), (long_ctx, [12]),  # shared, one-token options
        (long_ctx[:30], [13, 14]), (long_ctx[:30], [15, 16, 17, 18, 19]),  # shared, different lengths
        (long_ctx[5:], [20] * 16),  # a continuation exactly max_length long: no context left
        (long_ctx[:17], [21, 22]),  # one token over
        (long_ctx[:14], [23, 24]),  # fits exactly: nothing dropped
    ]
    got = scorer.loglikelihood(requests)
    expected = [brute_loglik(model, c, x, 16, scorer.prefix_token_id) for c, x in requests]
    assert_results_match(got, expected, requests)
    # the truncation is real: the full row gives another number
    full = brute_loglik(model, long_ctx, [11], 10_000, scorer.prefix_token_id)
    assert abs(full[0] - got[0][0]) > 1e-3


def test_bad_requests_are_errors(model, tokenizer):
    scorer = LoglikScorer(model, tokenizer, max_length=8)
    with pytest.raises(ValueError, match="request 1: empty continuation"):
        scorer.loglikelihood([([1, 2], [3]), ([1, 2], [])])
    with pytest.raises(ValueError, match="request 0: a 9-token continuation does not fit the 8-token context"):
        scorer.loglikelihood([([1], list(range(10, 19)))])
    assert len(scorer.loglikelihood([([1], list(range(10, 18)))])) == 1  # 8 tokens fit
    with pytest.raises(ValueError, match="batch_size"):
        LoglikScorer(model, tokenizer, batch_size=0)
    with pytest.raises(ValueError, match="prefix token"):
        LoglikScorer(model, None).loglikelihood([([], [5])])


@pytest.mark.parametrize("context, continuation", [
    ("Answer:", " A"), ("Answer: ", "A"), ("Answer:  ", " B"), ("1 + 1 =", " 2"), ("问题：", "苹果"),
    ("The capital of France is\n", "Paris"), ("x", ""), ("abc   ", ""),
])
def test_text_pairs_are_split_as_lm_eval_splits_them(model, tokenizer, context, continuation):
    lm_eval_model = pytest.importorskip("lm_eval.api.model")
    scorer = LoglikScorer(model, tokenizer)

    class Encoder:  # lm-eval's own _encode_pair, on the same tokenizer
        backend = "causal"

        def tok_encode(self, text, add_special_tokens=None):
            return tokenizer.encode(text, add_special_tokens=False)

    expected = lm_eval_model.TemplateLM._encode_pair(Encoder(), context, continuation)
    assert scorer.split_pair(context, continuation) == tuple(expected)
    assert scorer.split_pair("", continuation) == ([], scorer.encode(continuation))


def test_loglikelihood_text_moves_trailing_spaces_to_the_continuation(model, tokenizer):
    scorer = LoglikScorer(model, tokenizer)
    a, b = scorer.loglikelihood_text([("Answer: ", "A"), ("Answer:", " A")])
    assert a == b
    ctx, cont = scorer.split_pair("Answer: ", "A")
    assert cont == scorer.encode(" A") and ctx == scorer.encode("Answer:")
    (got,) = scorer.loglikelihood_text([("1 + 1 =", " 2")])
    ctx, cont = scorer.split_pair("1 + 1 =", " 2")
    expected = brute_loglik(model, ctx, cont, scorer.max_length, scorer.prefix_token_id)
    assert abs(got[0] - expected[0]) < TOL and got[1] == expected[1]


def test_next_token_logprobs_equal_a_full_forward(model, tokenizer):
    rng = random.Random(5)
    scorer = LoglikScorer(model, tokenizer, batch_size=3, max_length=24)
    contexts = [[rng.randrange(7, 400) for _ in range(n)] for n in (1, 5, 24, 40, 9, 13, 2)] + [[]]
    candidates = [30, 31, 200, 399, 7]
    got = scorer.next_token_logprobs(contexts, candidates)
    assert got.shape == (len(contexts), len(candidates)) and got.dtype == torch.float32
    for i, context in enumerate(contexts):
        row = context[-24:] or [scorer.prefix_token_id]
        expected = _logprobs(model, row)[-1, candidates]
        assert torch.allclose(got[i].double(), expected, atol=TOL), i


def reference_rolling(model, tokens: list[int], prefix: int, max_length: int, stride: int) -> tuple[float, int]:
    """Each token scored once, conditioned on the window it is predicted in: windows of targets
    seq[end : end + stride] (seq = [prefix] + tokens) whose inputs reach back max_length tokens
    from the window's last target. Built token by token from full forwards of each window."""
    seq = [prefix, *tokens]
    nll, n = 0.0, 0
    for end in range(1, len(seq), stride):
        last = min(end + stride, len(seq)) - 1
        inputs = seq[max(0, last - max_length) : last]
        logprobs = _logprobs(model, inputs)
        offset = max(0, last - max_length)
        for j in range(end, last + 1):
            nll -= float(logprobs[j - 1 - offset, seq[j]])
            n += 1
    return nll, n


def lm_eval_rolling(model, tokens: list[int], prefix: int, max_length: int) -> float:
    """lm-eval's loglikelihood_rolling: its disjoint windows, each scored with lm-eval's truncation."""
    utils = pytest.importorskip("lm_eval.utils")
    windows = map(utils.make_disjoint_window, utils.get_rolling_token_windows(tokens, prefix, max_length, 1))
    return -sum(brute_loglik(model, ctx, cont, max_length, prefix)[0] for ctx, cont in windows)


@pytest.mark.parametrize("length", [1, 15, 16, 17, 50])
def test_rolling_loglik_with_disjoint_windows_equals_lm_eval(model, tokenizer, length):
    rng = random.Random(length)
    tokens = [rng.randrange(7, 400) for _ in range(length)]
    scorer = LoglikScorer(model, tokenizer, batch_size=2, max_length=16)
    nll, n = scorer.rolling_loglik(tokens)
    assert n == length  # every token exactly once, the first after the prefix token
    assert abs(nll - lm_eval_rolling(model, tokens, scorer.prefix_token_id, 16)) < TOL
    assert abs(nll - reference_rolling(model, tokens, scorer.prefix_token_id, 16, 16)[0]) < TOL


@pytest.mark.parametrize("stride", [1, 5, 16])
def test_rolling_loglik_with_overlapping_windows(model, tokenizer, stride):
    rng = random.Random(11)
    tokens = [rng.randrange(7, 400) for _ in range(45)]
    scorer = LoglikScorer(model, tokenizer, batch_size=4, max_length=16)
    nll, n = scorer.rolling_loglik(tokens, stride=stride)
    expected, scored = reference_rolling(model, tokens, scorer.prefix_token_id, 16, stride)
    assert n == scored == len(tokens)
    assert abs(nll - expected) < TOL
    if stride == 1:  # every token sees the most context the model allows: a plain sliding window
        seq = [scorer.prefix_token_id, *tokens]
        sliding = -sum(float(_logprobs(model, seq[max(0, j - 16) : j])[-1, seq[j]]) for j in range(1, len(seq)))
        assert abs(nll - sliding) < TOL
    # several documents at once: the same figures as one by one
    many = scorer.rolling_loglik_many([tokens, tokens[:7], tokens[3:30]], stride=stride)
    assert abs(many[0][0] - nll) < TOL and many[0][1] == n
    assert [m[1] for m in many[1:]] == [7, 27]
    for doc, (value, _) in zip([tokens[:7], tokens[3:30]], many[1:]):
        assert abs(value - reference_rolling(model, doc, scorer.prefix_token_id, 16, stride)[0]) < TOL


def test_rolling_loglik_bad_stride(model, tokenizer):
    scorer = LoglikScorer(model, tokenizer, max_length=16)
    for stride in (17, -1):
        with pytest.raises(ValueError, match=r"stride must be in \[1, 16\]"):
            scorer.rolling_loglik([5, 6, 7], stride=stride)
    assert scorer.rolling_loglik([]) == (0.0, 0)


def test_from_checkpoint_and_encode(eval_checkpoint, model):
    scorer = LoglikScorer.from_checkpoint(eval_checkpoint, device="cpu", dtype="float32", batch_size=5)
    assert scorer.checkpoint_dir == eval_checkpoint and scorer.max_length == 512 and not scorer.model.training
    assert scorer.encode("Answer: A") == scorer.tokenizer.encode("Answer: A", add_special_tokens=False)
    requests = mixed_requests(model, seed=1)
    ours = LoglikScorer(model, scorer.tokenizer).loglikelihood(requests)
    assert_results_match(scorer.loglikelihood(requests), ours, requests)


# ---- other models behind the same scorer -------------------------------------------------------


def test_a_peft_wrapped_model_scores_through_its_adapters(eval_checkpoint, tokenizer):
    peft = pytest.importorskip("peft")
    base = load_pretrained(eval_checkpoint, device="cpu", dtype=torch.float32).eval()
    plain = LoglikScorer(base, tokenizer, batch_size=5)
    requests = mixed_requests(base, seed=2)
    before = plain.loglikelihood(requests)
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    wrapped = peft.get_peft_model(base, config).eval()
    scorer = LoglikScorer(wrapped, tokenizer, batch_size=5)
    assert scorer.max_length == 512 and scorer._sparse_logits  # config and logits_mask through the wrapper
    got = scorer.loglikelihood(requests)
    expected = [brute_loglik(wrapped, c, x, 512, scorer.prefix_token_id) for c, x in requests]
    assert_results_match(got, expected, requests)
    assert max(abs(a[0] - b[0]) for a, b in zip(got, before)) > 1e-3  # the adapters did change the numbers
    tokens = requests[0][0] * 3
    assert abs(scorer.rolling_loglik(tokens)[0] - reference_rolling(wrapped, tokens, scorer.prefix_token_id, 512, 512)[0]) < TOL


def test_transformers_model_gives_the_same_numbers(eval_checkpoint, model, tokenizer):
    """The non-lmforge path (full logits, no logits_mask, no lmforge KV cache) on
    ``AutoModelForCausalLM`` of the same checkpoint."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(eval_checkpoint, dtype=torch.float32).eval()
    ours = LoglikScorer(model, tokenizer, batch_size=6)
    theirs = LoglikScorer(hf, tokenizer, batch_size=6)
    assert not theirs._sparse_logits and theirs.max_length == ours.max_length
    requests = mixed_requests(model, seed=4)
    assert_results_match(theirs.loglikelihood(requests), ours.loglikelihood(requests), requests)
    contexts = [r[0] for r in requests[:6]]
    assert torch.allclose(theirs.next_token_logprobs(contexts, [9, 10, 11]), ours.next_token_logprobs(contexts, [9, 10, 11]), atol=TOL)
    tokens = [t for c, x in requests for t in c + x][:600]
    a, b = theirs.rolling_loglik(tokens, stride=200), ours.rolling_loglik(tokens, stride=200)
    assert a[1] == b[1] == len(tokens) and abs(a[0] - b[0]) < 1e-3  # a sum over 600 tokens
