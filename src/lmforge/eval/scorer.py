"""Batched log-likelihood scoring: what multiple choice, bits-per-byte, the lm-eval bridge and
in-training evaluation all ask a model.

Three questions, each answered for many inputs at once:

* ``loglikelihood([(context_ids, continuation_ids), ...])`` → ``[(log p(continuation | context),
  is_greedy), ...]`` with lm-evaluation-harness's semantics (``is_greedy``: every continuation
  token is the model's argmax). ``loglikelihood_text`` takes strings and splits them into tokens
  the way lm-eval's HF backend does, so the two score the same token sequences.
* ``next_token_logprobs(contexts, candidates)`` → the log-probabilities of a few candidate tokens
  after each context (MiniMind's C-Eval scoring: the logits of ``A``/``B``/``C``/``D``).
* ``rolling_loglik(token_ids)`` → the summed negative log-likelihood of a whole text in sliding
  windows (perplexity, bits per byte).

Where the work goes: requests are sorted by length (little padding) and batched; identical
requests are computed once; a context shared by several continuations (the options of a
multiple-choice question) is run once — with one-token continuations it is a single forward for
all of them, longer ones continue from the context's KV cache; logits are computed only at the
positions that are scored (the output projection over the vocabulary costs as much as the rest
of a small model, and lm-eval's HF backend computes it everywhere). Over-long inputs lose their
context's oldest tokens, as in lm-eval.

Usage::

    scorer = LoglikScorer.from_checkpoint("runs/demo/sft-.../checkpoints/step_000150")
    scorer.loglikelihood_text([("1 + 1 =", " 2"), ("1 + 1 =", " 3")])   # [(-0.4, True), (-2.1, False)]
    nll, n = scorer.rolling_loglik(scorer.encode(text))                  # nats over n tokens
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

PAD_ID = 0  # any valid id: padded positions are never scored, and right padding is never attended to


def base_model(model):
    """The model under a peft wrapper (LoRA adapters are injected into it in place), else the model."""
    get = getattr(model, "get_base_model", None)  # peft wrappers (LoRA runs evaluate through them)
    return get() if callable(get) else model


class LoglikScorer:
    """Log-likelihoods from one causal LM; see the module docstring.

    ``model``: an lmforge ``Transformer`` (or any module whose output has ``.logits``);
    ``tokenizer``: an HF tokenizer (needed for the ``*_text`` methods and ``encode``);
    ``batch_size``: rows per forward; ``max_length``: the context limit (default: the model's);
    ``prefix_token_id``: what an empty context becomes (default: BOS, else EOS — lm-eval's rule).
    The caller chooses autocast and ``model.eval()``; scoring runs under ``torch.inference_mode``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any = None,
        *,
        batch_size: int = 32,
        max_length: int | None = None,
        prefix_token_id: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        from lmforge.model.transformer import Transformer

        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        config = getattr(base_model(model), "config", None)
        self.max_length = max_length or getattr(config, "max_seq_len", None) or getattr(config, "max_position_embeddings", 2048)
        self.device = next(model.parameters()).device
        # Only lmforge's own model can compute logits at chosen positions (``logits_mask``).
        self._sparse_logits = isinstance(base_model(model), Transformer)
        if prefix_token_id is None and tokenizer is not None:
            prefix_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.prefix_token_id = prefix_token_id

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", dtype: str | torch.dtype | None = None, batch_size: int = 32) -> LoglikScorer:
        """Model + tokenizer of a checkpoint dir or a run dir (its latest step), in eval mode."""
        from transformers import AutoTokenizer

        from lmforge.infer.engine import inference_dtype
        from lmforge.model.hf import load_pretrained
        from lmforge.train.checkpoint import resolve_checkpoint
        from lmforge.train.distributed import pick_device

        ckpt = resolve_checkpoint(path)
        dev = pick_device(str(device))
        model = load_pretrained(ckpt, device=dev, dtype=inference_dtype(dtype, dev)).eval()
        scorer = cls(model, AutoTokenizer.from_pretrained(ckpt), batch_size=batch_size)
        scorer.checkpoint_dir = ckpt
        return scorer

    # --- text in --------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("this scorer has no tokenizer; pass token ids")
        return self.tokenizer.encode(text, add_special_tokens=False)

    def split_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context_ids, continuation_ids) as lm-eval's HF backend splits them: trailing spaces of
        the context move to the continuation, and the continuation's tokens are those of
        ``context + continuation`` after the context's own (merges across the seam stay whole)."""
        if not context:
            return [], self.encode(continuation)
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole, ctx = self.encode(context + continuation), self.encode(context)
        return ctx, whole[len(ctx) :]

    def loglikelihood_text(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        return self.loglikelihood([self.split_pair(c, x) for c, x in requests])

    # --- the three questions --------------------------------------------------------------------

    def loglikelihood(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, bool]]:
        """``[(sum of log p(continuation | context), is_greedy)]`` in the order given."""
        keyed: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[float, bool] | None] = {}
        for i, (context, continuation) in enumerate(requests):
            if not continuation:
                raise ValueError(f"request {i}: empty continuation")
            if len(continuation) > self.max_length:
                raise ValueError(f"request {i}: a {len(continuation)}-token continuation does not fit the {self.max_length}-token context")
            context = tuple(context) or (self._prefix(),)
            keyed[(context, tuple(continuation))] = None
        by_context: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        for context, continuation in keyed:
            by_context.setdefault(context, []).append(continuation)
        shared = {c: conts for c, conts in by_context.items() if self._shareable(c, conts)}
        single = [(c, x) for c, conts in by_context.items() if c not in shared for x in conts]
        with torch.inference_mode():
            for (context, continuation), result in zip(single, self._score_pairs(single)):
                keyed[(context, continuation)] = result
            keyed.update(self._score_shared(shared))
        return [keyed[(tuple(c) or (self._prefix(),), tuple(x))] for c, x in requests]

    def next_token_logprobs(self, contexts: Sequence[Sequence[int]], candidates: Sequence[int]) -> torch.Tensor:
        """[len(contexts), len(candidates)] float32 log-probabilities of each candidate token id
        right after each context."""
        rows = [list(c)[-self.max_length :] or [self._prefix()] for c in contexts]
        out = torch.empty(len(rows), len(candidates), dtype=torch.float32)
        cand = torch.tensor(list(candidates), dtype=torch.long)
        with torch.inference_mode():
            for batch in self._batches(rows):
                last = [[len(rows[i]) - 1] for i in batch]
                for i, logprobs in zip(batch, self._logprobs_at([rows[i] for i in batch], last)):
                    out[i] = logprobs[0, cand.to(logprobs.device)].cpu()
        return out

    def rolling_loglik(self, token_ids: Sequence[int], stride: int | None = None) -> tuple[float, int]:
        """(summed -log p, tokens scored) over every token of ``token_ids``, the first given the
        prefix token; see ``rolling_loglik_many``."""
        return self.rolling_loglik_many([token_ids], stride)[0]

    def rolling_loglik_many(self, documents: Sequence[Sequence[int]], stride: int | None = None) -> list[tuple[float, int]]:
        """Each document scored in windows of ``max_length`` tokens that advance by ``stride``
        (default ``max_length``: disjoint windows, as lm-eval's ``loglikelihood_rolling``; a
        smaller stride gives every scored token more context at more cost). Every token is scored
        exactly once; windows of all documents are batched together."""
        stride = stride or self.max_length
        if not 1 <= stride <= self.max_length:
            raise ValueError(f"stride must be in [1, {self.max_length}], got {stride}")
        rows, starts, owner = [], [], []
        for d, tokens in enumerate(documents):
            seq = [self._prefix(), *tokens]
            for end in range(1, len(seq), stride):  # targets seq[end : end + stride]
                last = min(end + stride, len(seq)) - 1
                first = max(0, last - self.max_length)  # the row: up to max_length inputs + the last target
                rows.append(seq[first : last + 1])
                starts.append(end - 1 - first)
                owner.append(d)
        totals = [[0.0, 0] for _ in documents]
        with torch.inference_mode():
            for d, (logprob, _greedy, n) in zip(owner, self._score_rows(rows, starts)):
                totals[d][0] -= logprob
                totals[d][1] += n
        return [(nll, n) for nll, n in totals]

    # --- machinery ------------------------------------------------------------------------------

    def _prefix(self) -> int:
        if self.prefix_token_id is None:
            raise ValueError("an empty context needs a prefix token: give the scorer a tokenizer with a BOS or EOS token, or prefix_token_id")
        return self.prefix_token_id

    def _shareable(self, context: tuple[int, ...], continuations: list[tuple[int, ...]]) -> bool:
        """Whether a context's continuations can share one run of it: there are several, and
        either all are one token, or the KV-cache path applies (lmforge's model) and nothing
        needs truncating (each request alone would keep a different amount of its context)."""
        if len(continuations) < 2:
            return False
        longest = max(len(c) for c in continuations)
        return longest == 1 or (self._sparse_logits and len(context) + longest - 1 <= self.max_length)

    def _batches(self, rows: Sequence[Sequence[int]]) -> list[list[int]]:
        """Indices of ``rows`` in batches of similar length, longest first (a memory error shows at once)."""
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def _logits(self, ids: torch.Tensor, keep: torch.Tensor, **kwargs) -> torch.Tensor:
        """Logits [N, V] at the positions where ``keep`` [B, T] is True, row-major."""
        if self._sparse_logits:
            return self.model(ids, logits_mask=keep, **kwargs).logits
        return self.model(ids, **kwargs).logits[keep]

    def _logprobs_at(self, rows: list[list[int]], positions: list[list[int]]) -> list[torch.Tensor]:
        """For each right-padded row, float32 log-softmax [len(positions[i]), V] at its positions
        (causal attention never looks right, so right padding needs no mask)."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
        keep = torch.zeros((len(rows), width), dtype=torch.bool)
        for b, (row, pos) in enumerate(zip(rows, positions)):
            ids[b, : len(row)] = torch.tensor(row)
            keep[b, pos] = True
        logits = self._logits(ids.to(self.device), keep.to(self.device))
        # Rows of the flat output follow keep's row-major order, i.e. sorted positions per row.
        return list(F.log_softmax(logits.float(), dim=-1).split([len(p) for p in positions]))

    def _score_rows(self, rows: list[list[int]], starts: list[int]) -> list[tuple[float, bool, int]]:
        """For each row, the summed log p(row[t+1] | row[:t+1]) over t >= starts[i], whether every
        such token is the argmax, and how many were scored. A row is at most max_length + 1 long."""
        results: list[tuple[float, bool, int]] = [(0.0, True, 0)] * len(rows)
        for batch in self._batches(rows):
            inputs = [rows[i][:-1] for i in batch]
            spans = [list(range(starts[i], len(rows[i]) - 1)) for i in batch]
            for i, span, logprobs in zip(batch, spans, self._logprobs_at(inputs, spans)):
                targets = torch.tensor(rows[i][starts[i] + 1 :], device=logprobs.device)
                picked = logprobs.gather(1, targets[:, None]).squeeze(1)
                results[i] = (float(picked.double().sum()), bool((logprobs.argmax(-1) == targets).all()), len(span))
        return results

    def _score_pairs(self, pairs: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> list[tuple[float, bool]]:
        rows, starts = [], []
        for context, continuation in pairs:
            row = [*context, *continuation][-(self.max_length + 1) :]
            rows.append(row)
            starts.append(len(row) - 1 - len(continuation))
        return [(logprob, greedy) for logprob, greedy, _ in self._score_rows(rows, starts)]

    def _score_shared(self, groups: dict[tuple[int, ...], list[tuple[int, ...]]]) -> dict:
        """Contexts with several continuations: the context runs once per group. One-token
        continuations read the context's last position; longer ones run on from its KV cache."""
        out: dict = {}
        keys = list(groups)
        for batch in self._batches([list(k) for k in keys]):
            # Over-long contexts occur only with one-token continuations (_shareable): keep the last max_length.
            contexts = [keys[i][-self.max_length :] for i in batch]
            conts = [groups[keys[i]] for i in batch]
            if all(len(c) == 1 for cs in conts for c in cs):
                last = [[len(c) - 1] for c in contexts]
                for i, cs, logprobs in zip(batch, conts, self._logprobs_at([list(c) for c in contexts], last)):
                    for c in cs:
                        out[(keys[i], c)] = (float(logprobs[0, c[0]]), bool(logprobs[0].argmax() == c[0]))
            else:
                for i, c, result in self._continue_from_cache(batch, keys, contexts, conts):
                    out[(keys[i], c)] = result
        return out

    def _continue_from_cache(self, batch, keys, contexts, conts):
        """Prefill left-padded contexts into a KV cache, copy each context's cache rows to its
        continuations, and score those in one more forward."""
        model, device = self.model, self.device
        lengths = [len(c) for c in contexts]
        width = max(lengths)
        longest = max(len(c) for cs in conts for c in cs)
        ids = torch.full((len(contexts), width), PAD_ID, dtype=torch.long)
        key_mask = torch.zeros((len(contexts), width + longest), dtype=torch.bool)
        for b, context in enumerate(contexts):
            ids[b, width - len(context) :] = torch.tensor(context)
            key_mask[b, width - len(context) : width] = True
        positions = (key_mask[:, :width].long().cumsum(-1) - 1).clamp(min=0)
        base = base_model(model)
        cache = base.new_kv_cache(len(contexts), width + longest)
        last = model(ids.to(device), position_ids=positions.to(device), kv_cache=cache,
                     attention_mask=key_mask[:, :width].to(device), num_logits_to_keep=1).logits[:, -1]
        first = F.log_softmax(last.float(), dim=-1)
        owners = [(b, c) for b, cs in enumerate(conts) for c in cs]
        rows = torch.tensor([b for b, _ in owners], device=device)
        cache.k, cache.v = cache.k.index_select(1, rows), cache.v.index_select(1, rows)
        follow = torch.full((len(owners), longest - 1), PAD_ID, dtype=torch.long)
        keep = torch.zeros_like(follow, dtype=torch.bool)
        for r, (b, c) in enumerate(owners):
            follow[r, : len(c) - 1] = torch.tensor(c[:-1])
            keep[r, : len(c) - 1] = True
        masks = key_mask[rows.cpu(), : width + longest - 1]
        masks[:, width:] = True  # right padding after a continuation is never attended to by it
        start = torch.tensor([lengths[b] for b, _ in owners])[:, None]
        follow_pos = start + torch.arange(longest - 1)[None, :]
        rest = self._logits(follow.to(device), keep.to(device), position_ids=follow_pos.to(device), kv_cache=cache,
                            attention_mask=masks.to(device)) if longest > 1 else None
        rest = F.log_softmax(rest.float(), dim=-1).split([len(c) - 1 for _, c in owners]) if rest is not None else None
        for r, (b, c) in enumerate(owners):
            target = torch.tensor(c, device=device)
            step_logprobs = torch.cat([first[b : b + 1], rest[r]]) if rest is not None else first[b : b + 1]
            picked = step_logprobs.gather(1, target[:, None]).squeeze(1)
            yield batch[b], c, (float(picked.double().sum()), bool((step_logprobs.argmax(-1) == target).all()))
