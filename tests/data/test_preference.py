"""Preference pairs: the MiniMind, ShareGPT-style and TRL records read to one shape, bad records
named by file:line, labels on exactly the final reply, over-long pairs truncated or dropped."""

from __future__ import annotations

import gzip
import json

import pytest

from lmforge.data.chat import IGNORE_INDEX
from lmforge.data.document import DataError
from lmforge.data.preference import (
    EncodedPair, PreferencePair, PreferenceStats, collate_pairs, encode_pair, fit_pair, parse_preference, read_preference_pairs,
)  # fmt: skip
from lmforge.data.readers import ReadStats

SYSTEM = {"role": "system", "content": "你是一个助手。"}
PROMPT = [SYSTEM, {"role": "user", "content": "1+1=?"}, {"role": "assistant", "content": "2"}, {"role": "user", "content": "And 2+2?"}]
CHOSEN, REJECTED = "4, of course.", "5"
SHAREGPT_TURNS = [{"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]} for m in PROMPT[1:]]


@pytest.mark.parametrize(
    "record",
    [
        {"chosen": PROMPT + [{"role": "assistant", "content": CHOSEN}], "rejected": PROMPT + [{"role": "assistant", "content": REJECTED}]},
        {"system": SYSTEM["content"], "conversations": SHAREGPT_TURNS, "chosen": CHOSEN, "rejected": REJECTED},
        {"conversations": [{"from": "system", "value": SYSTEM["content"]}] + SHAREGPT_TURNS,
         "chosen": {"from": "gpt", "value": CHOSEN}, "rejected": {"from": "gpt", "value": REJECTED}},
        {"system": SYSTEM["content"], "prompt": PROMPT[1:], "chosen": [{"role": "assistant", "content": CHOSEN}],
         "rejected": [{"role": "assistant", "content": REJECTED}]},
    ],
    ids=["minimind", "sharegpt-strings", "sharegpt-messages-system-turn", "trl-prompt"],
)  # fmt: skip
def test_formats_give_the_same_pair(record):
    assert parse_preference(record) == (PROMPT, CHOSEN, REJECTED)


def test_a_string_prompt_is_one_user_turn():
    assert parse_preference({"prompt": "hi", "chosen": "hello", "rejected": "go away"}) == ([{"role": "user", "content": "hi"}], "hello", "go away")


GOOD = json.dumps({"conversations": SHAREGPT_TURNS, "chosen": CHOSEN, "rejected": REJECTED})


@pytest.mark.parametrize(
    "line, why",
    [
        ("{broken", "Expecting property name"),
        ('{"conversations": [{"from": "human", "value": "q"}], "chosen": "a"}', "no 'rejected' field"),
        ('{"chosen": "a", "rejected": "b"}', "no 'conversations' or 'prompt' field"),
        ('{"conversations": [{"from": "human", "value": "q"}], "chosen": 3, "rejected": "b"}', "'chosen' must be a string"),
        ('{"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "human", "value": "a"}, "rejected": "b"}',
         "'chosen' must end with an assistant reply"),
        ('{"conversations": [{"from": "gpt", "value": "q"}], "chosen": "a", "rejected": "b"}', "turn 0 is 'assistant', expected 'user'"),
        ('{"conversations": [{"from": "robot", "value": "q"}], "chosen": "a", "rejected": "b"}', "unknown speaker 'robot'"),
        ('{"conversations": [{"from": "human", "value": "q"}], "chosen": "same", "rejected": "same"}', "replies are identical"),
        ('{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], '
         '"rejected": [{"role": "user", "content": "other q"}, {"role": "assistant", "content": "b"}]}', "differ at turn 0"),
    ],
)  # fmt: skip
def test_bad_records_name_file_and_line_or_are_counted(tmp_path, line, why):
    path = tmp_path / "pairs.jsonl"
    path.write_text(f"{GOOD}\n{line}\n\n{GOOD}\n")
    with pytest.raises(DataError, match=rf"pairs\.jsonl:2: .*{why}"):
        list(read_preference_pairs(path))
    stats = ReadStats()
    pairs = list(read_preference_pairs(path, skip_bad=True, stats=stats))
    assert [p.line for p in pairs] == [1, 4] and stats.bad_lines == 1 and stats.documents == 2
    assert stats.bad_examples[0].startswith(f"{path}:2: ")


def test_compressed_files_and_directories(tmp_path):
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(GOOD + "\n")
    (tmp_path / "a.jsonl").write_text(json.dumps({"conversations": SHAREGPT_TURNS, "chosen": CHOSEN, "rejected": "6", "id": 7}) + "\n")
    pairs = list(read_preference_pairs(tmp_path))
    assert [(p.source.rsplit("/", 1)[-1], p.rejected) for p in pairs] == [("a.jsonl", "6"), ("b.jsonl.gz", REJECTED)]
    assert pairs[0].metadata == {"id": 7}
    with pytest.raises(DataError, match="must be jsonl"):
        (tmp_path / "c.txt").write_text("x")
        list(read_preference_pairs(tmp_path / "c.txt"))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from lmforge.tokenizer.train import TokenizerConfig, load_tokenizer, train_tokenizer

    texts = ["你是一个助手。今天天气很好。", "The answer is 4, of course. 1+1=2 And 2+2?"] * 50
    out = train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tokenizer", TokenizerConfig(vocab_size=300, num_reserved_tokens=4))
    return out, load_tokenizer(out)


def test_labels_are_exactly_the_final_reply(tokenizer):
    from transformers import AutoTokenizer

    directory, fast = tokenizer
    pair = encode_pair(PROMPT, CHOSEN, REJECTED, fast)
    hf = AutoTokenizer.from_pretrained(directory)
    im_end = fast.token_to_id("<|im_end|>")
    for reply, ids, labels in ((CHOSEN, pair.chosen_ids, pair.chosen_labels), (REJECTED, pair.rejected_ids, pair.rejected_labels)):
        # The ids the checkpoint's own chat template renders, for training and serving alike.
        assert ids == hf.apply_chat_template(PROMPT + [{"role": "assistant", "content": reply}], tokenize=True, return_dict=False)
        trained = [tok for tok, label in zip(ids, labels) if label != IGNORE_INDEX]
        assert all(label in (IGNORE_INDEX, tok) for tok, label in zip(ids, labels))
        # The reply and its <|im_end|>: not the earlier assistant turn "2", not the headers or the trailing newline.
        assert trained == fast.encode(reply, add_special_tokens=False).ids + [im_end]
        first = labels.index(next(x for x in labels if x != IGNORE_INDEX))
        assert fast.decode(ids[:first], skip_special_tokens=False).endswith("And 2+2?<|im_end|>\n<|im_start|>assistant\n")
        assert labels[-1] == IGNORE_INDEX and fast.decode(ids[-1:]) == "\n"


def test_collate_right_pads_chosen_then_rejected_with_next_token_labels(tokenizer):
    _, fast = tokenizer
    short = encode_pair(PROMPT[:2], "2", "3", fast)
    long = encode_pair(PROMPT, CHOSEN, REJECTED, fast)
    batch = collate_pairs([short, long], pad_id=0)
    rows = [short.chosen_ids, long.chosen_ids, short.rejected_ids, long.rejected_ids]
    T = max(map(len, rows))
    assert batch["input_ids"].shape == batch["labels"].shape == (4, T)
    assert batch["padding_tokens"] == 4 * T - sum(map(len, rows))
    for r, (ids, aligned) in enumerate([(short.chosen_ids, short.chosen_labels), (long.chosen_ids, long.chosen_labels),
                                        (short.rejected_ids, short.rejected_labels), (long.rejected_ids, long.rejected_labels)]):  # fmt: skip
        assert batch["input_ids"][r, : len(ids)].tolist() == ids and set(batch["input_ids"][r, len(ids) :].tolist()) <= {0}
        labels = batch["labels"][r].tolist()
        # labels[t] predicts input_ids[t + 1]: the aligned labels moved one to the left.
        assert labels[: len(ids) - 1] == aligned[1:] and set(labels[len(ids) - 1 :]) == {IGNORE_INDEX}
    assert "reference_chosen_logps" not in batch
    short.reference_chosen, short.reference_rejected, long.reference_chosen, long.reference_rejected = -1.0, -2.0, -3.0, -4.0
    batch = collate_pairs([short, long])
    assert batch["reference_chosen_logps"].tolist() == [-1.0, -3.0] and batch["reference_rejected_logps"].tolist() == [-2.0, -4.0]


def test_overlong_pairs_lose_old_exchanges_or_are_dropped(tokenizer):
    _, fast = tokenizer
    long_prompt = PROMPT + [{"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}]
    pair = PreferencePair(long_prompt, "6", "7")
    full = encode_pair(long_prompt, "6", "7", fast).length
    stats = PreferenceStats()
    fitted = fit_pair(pair, fast, full - 1, "truncate", stats)
    expected = encode_pair([SYSTEM] + long_prompt[3:], "6", "7", fast)  # the oldest exchange went, the system stayed
    assert isinstance(fitted, EncodedPair) and fitted.chosen_ids == expected.chosen_ids and fitted.rejected_labels == expected.rejected_labels
    assert (stats.truncated_overlong, stats.exchanges_removed, stats.kept) == (1, 1, 1)
    assert fit_pair(pair, fast, full - 1, "drop", stats) is None and stats.dropped_overlong == 1
    # Only the last question and the replies left, still too long: dropped under either policy.
    last_only = encode_pair([SYSTEM, long_prompt[-1]], "6", "7", fast).length
    assert fit_pair(pair, fast, last_only - 1, "truncate", stats) is None and stats.dropped_overlong == 2
    assert fit_pair(pair, fast, full, "drop", stats).chosen_ids == encode_pair(long_prompt, "6", "7", fast).chosen_ids
    assert stats.pairs == 4 and stats.kept == 2


def test_real_preference_pairs(shared_data, tokenizer):
    _, fast = tokenizer
    stats = ReadStats()
    pairs = list(read_preference_pairs(shared_data / "dpo" / "dpo_zh_500.jsonl", stats=stats))
    # MedicalGPT's pairs: one question each, 84 of them after a system turn; none malformed.
    assert len(pairs) == stats.documents == 500 and stats.bad_lines == 0
    assert sum(p.prompt[0]["role"] == "system" for p in pairs) == 84
    assert all(p.prompt[-1]["role"] == "user" and p.chosen != p.rejected for p in pairs)
    pstats = PreferenceStats()
    im_end = fast.token_to_id("<|im_end|>")
    for pair in pairs[:40]:
        encoded = fit_pair(pair, fast, 100_000, "truncate", pstats)
        trained = [t for t, label in zip(encoded.chosen_ids, encoded.chosen_labels) if label != IGNORE_INDEX]
        assert trained == fast.encode(pair.chosen, add_special_tokens=False).ids + [im_end]
    assert pstats.kept == 40 and pstats.dropped_overlong == 0
