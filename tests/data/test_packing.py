"""Packing conversations: every example placed once, little padding, over-long policies counted,
and a packed batch trains exactly like the conversations one by one (no attention across them)."""

from __future__ import annotations

import random

import pytest
import torch

from lmforge.data.chat import IGNORE_INDEX, read_conversations
from lmforge.data.packing import Packer, collate, fit_conversation


def _examples(n: int, seed: int = 0, max_len: int = 60) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(3, max_len)
        ids = [rng.randrange(3, 90) for _ in range(length)]
        cut = rng.randint(1, length - 1)
        out.append((ids, [IGNORE_INDEX] * cut + ids[cut:]))
    return out


def test_every_example_is_placed_once_with_its_own_positions():
    examples = _examples(300)
    packer = Packer(seq_len=128)
    rows = list(packer.pack(examples))
    pieces = []
    for row in rows:
        assert len(row.input_ids) <= 128
        for seg in sorted(set(row.segment_ids)):
            idx = [i for i, s in enumerate(row.segment_ids) if s == seg]
            assert [row.position_ids[i] for i in idx] == list(range(len(idx)))
            pieces.append(([row.input_ids[i] for i in idx], [row.labels[i] for i in idx]))
    assert sorted(pieces) == sorted(examples)
    s = packer.stats
    assert s.rows == len(rows) and s.tokens == sum(len(i) for i, _ in examples)
    assert s.padding == 128 * s.rows - s.tokens
    assert s.padding_fraction <= 0.05, s.as_dict()


def test_overlong_conversations_follow_the_policy():
    def encode(messages):  # one token per character, labels on the assistant's
        ids, labels = [], []
        for m in messages:
            toks = [ord(c) % 90 + 3 for c in m["content"]] + [1]
            ids += toks
            labels += toks if m["role"] == "assistant" else [IGNORE_INDEX] * len(toks)
        return ids, labels

    conv = [{"role": "system", "content": "sys"}]
    for i in range(4):
        conv += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    full = len(encode(conv)[0])
    assert fit_conversation(conv, encode, full, "drop")[2] == 0
    assert fit_conversation(conv, encode, full - 1, "drop") is None
    ids, labels, removed = fit_conversation(conv, encode, full - 1, "truncate")
    assert removed == 1 and (ids, labels) == encode(conv[:1] + conv[3:])  # the oldest exchange went, the system stayed
    assert fit_conversation(conv, encode, 10, "truncate") is None  # even the last exchange is too long


def test_a_packed_batch_trains_like_the_conversations_one_by_one():
    from lmforge.model import ModelConfig, Transformer
    from lmforge.train.objectives import LanguageModeling

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=96, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=48, max_seq_len=128))
    examples = _examples(12, seed=1, max_len=40)
    rows = list(Packer(seq_len=96).pack(examples))
    assert len(rows) < len(examples)
    objective = LanguageModeling()
    batch = collate(rows, pad_id=0, seq_len=96)
    packed_loss, _ = objective(model, batch)

    # Reference: each conversation alone (next-token labels shifted as the packed rows are).
    total, count = 0.0, 0
    for ids, labels in examples:
        alone = collate(list(Packer(seq_len=len(ids)).pack([(ids, labels)])), pad_id=0)
        loss_sum, n = objective.evaluate(model, {"input_ids": alone["input_ids"], "labels": alone["labels"]})
        total, count = total + loss_sum, count + n
    assert count == objective.loss_tokens(batch)
    assert packed_loss.item() == pytest.approx(total / count, rel=1e-5)
    # Without the mask, conversations would see each other and the loss would differ.
    leaky, _ = objective(model, {"input_ids": batch["input_ids"], "labels": batch["labels"]})
    assert abs(leaky.item() - packed_loss.item()) > 1e-4


def test_real_conversations_pack_with_little_padding(shared_data, tmp_path, show):
    # The shared samples are long multi-turn chats (~1k tokens each with a 3,000-token
    # vocabulary), so rows are 2,048 tokens: with 1,024 most rows hold one truncated chat.
    from lmforge.tokenizer.train import TokenizerConfig, load_tokenizer, train_tokenizer

    convs = [c.messages for c in read_conversations(shared_data / "sft", skip_bad=True)]
    texts = [m["content"] for c in convs[:400] for m in c]
    tok = load_tokenizer(train_tokenizer(texts, tmp_path / "tok", TokenizerConfig(vocab_size=3000)))
    packer = Packer(seq_len=2048, policy="truncate")
    rows = list(packer.pack_messages(convs, tok))
    s = packer.stats
    show(f"\npacking {s.conversations} real conversations into {s.rows} rows of 2048: padding {s.padding_fraction:.2%}, "
         f"truncated {s.truncated_overlong} ({s.exchanges_removed} exchanges), dropped {s.dropped_overlong}, "
         f"trained tokens {s.trained_tokens / max(s.tokens, 1):.0%}")
    assert s.conversations == len(convs) and s.rows == len(rows)
    assert s.padding_fraction <= 0.05
    assert sum(len(set(r.segment_ids)) for r in rows) == s.conversations - s.dropped_overlong


def test_collate_labels_are_the_next_tokens_of_the_assistant_replies():
    examples = _examples(10, seed=3, max_len=30)
    rows = list(Packer(seq_len=64).pack(examples))
    batch = collate(rows, pad_id=0, seq_len=64)
    for b, row in enumerate(rows):
        ids, labels = batch["input_ids"][b].tolist(), batch["labels"][b].tolist()
        for t, target in enumerate(labels):
            if target != IGNORE_INDEX:
                assert target == ids[t + 1]  # the token after position t, never the token at t
        # exactly the tokens the conversations label (the assistant's) are predicted, one step early
        assert [x for x in labels if x != IGNORE_INDEX] == [x for x in row.labels if x != IGNORE_INDEX]
