"""Chat data: the five record formats, conversation checks with file:line errors, and labels on
exactly the assistant's tokens, matching the tokenizer's own chat template."""

from __future__ import annotations

import json

import pytest

from lmforge.data.chat import IGNORE_INDEX, encode_conversation, parse_conversation, read_conversations
from lmforge.data.document import DataError
from lmforge.data.readers import ReadStats

EXPECTED = [
    {"role": "system", "content": "你是一个助手。"},
    {"role": "user", "content": "1+1=?"},
    {"role": "assistant", "content": "2"},
    {"role": "user", "content": "And 2+2?"},
    {"role": "assistant", "content": "4, of course."},
]
TURNS = EXPECTED[1:]


@pytest.mark.parametrize(
    "record",
    [
        {"conversations": EXPECTED},  # MiniMind
        {"messages": EXPECTED},  # OpenAI
        {"system": "你是一个助手。", "conversations": [{"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]} for m in TURNS]},
        {"system": "你是一个助手。", "conversations": [{"from": "human" if m["role"] == "user" else "yayi", "value": m["content"]} for m in TURNS]},
        {"conversations": [{"from": "system", "value": "你是一个助手。"}] + [{"from": m["role"], "value": m["content"]} for m in TURNS]},
    ],
    ids=["minimind", "openai", "sharegpt", "yayi", "sharegpt-system-turn"],
)
def test_formats_give_the_same_conversation(record):
    assert parse_conversation(record) == EXPECTED


def test_alpaca_and_trailing_user_turns():
    assert parse_conversation({"instruction": "Add", "input": "1 and 1", "output": "2", "system": "Be brief."}) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Add\n\n1 and 1"},
        {"role": "assistant", "content": "2"},
    ]
    assert parse_conversation({"instruction": "Say hi", "output": "hi"})[0] == {"role": "user", "content": "Say hi"}
    assert parse_conversation({"messages": TURNS + [{"role": "user", "content": "unanswered"}]}) == TURNS

def test_prompts_mode_keeps_the_question_a_teacher_will_answer():
    question = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}]}
    with pytest.raises(ValueError, match="no user or assistant turns"):
        parse_conversation(question)  # for training the unanswered question is cut: nothing is left
    assert parse_conversation(question, prompts=True) == question["messages"]
    assert parse_conversation({"instruction": "Name a prime."}, prompts=True) == [{"role": "user", "content": "Name a prime."}]
    answered = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    assert parse_conversation(answered, prompts=True)[-1] == {"role": "assistant", "content": "hello"}
    with pytest.raises(ValueError, match="expected 'user'"):
        parse_conversation({"messages": [{"role": "assistant", "content": "hello"}]}, prompts=True)


@pytest.mark.parametrize(
    "line, why",
    [
        ("not json", "Expecting value"),
        ('{"text": "pretraining text"}', "no 'conversations', 'messages'"),
        ('{"messages": []}', "non-empty list"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "unknown speaker 'robot'"),
        ('{"messages": [{"role": "user", "content": 3}]}', "content must be a string"),
        ('{"messages": [{"role": "assistant", "content": "x"}]}', "turn 0 is 'assistant', expected 'user'"),
        ('{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}', "turn 1 is 'user', expected 'assistant'"),
        ('{"messages": [{"role": "user", "content": "only a question"}]}', "no assistant turn"),
    ],
)
def test_bad_records_name_file_and_line_or_are_counted(tmp_path, line, why):
    path = tmp_path / "chat.jsonl"
    good = json.dumps({"messages": TURNS})
    path.write_text(f"{good}\n{line}\n{good}\n")
    with pytest.raises(DataError, match=rf"chat\.jsonl:2: .*{why}"):
        list(read_conversations(path))
    stats = ReadStats()
    convs = list(read_conversations(path, skip_bad=True, stats=stats))
    assert [c.line for c in convs] == [1, 3] and stats.bad_lines == 1 and stats.documents == 2


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from lmforge.tokenizer.train import TokenizerConfig, load_tokenizer, train_tokenizer

    texts = ["你是一个助手。今天天气很好。", "The answer is 4, of course. 1+1=2", "def f(x):\n    return x\n"] * 50
    out = train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tokenizer", TokenizerConfig(vocab_size=400, num_reserved_tokens=4))
    return out, load_tokenizer(out)


def test_labels_fall_exactly_on_assistant_replies(tokenizer):
    from transformers import AutoTokenizer

    directory, fast = tokenizer
    ids, labels = encode_conversation(EXPECTED, fast)
    hf = AutoTokenizer.from_pretrained(directory)
    # The same ids as the chat template the checkpoint carries, for serving and for `lmforge chat`.
    assert ids == hf.apply_chat_template(EXPECTED, tokenize=True, return_dict=False)
    assert encode_conversation(EXPECTED, hf) == (ids, labels)
    assert len(labels) == len(ids)
    trained = [tok for tok, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert all(label in (IGNORE_INDEX, tok) for tok, label in zip(ids, labels))
    # Exactly each assistant reply and its <|im_end|>, in order; nothing of the system, user or headers.
    im_end = fast.token_to_id("<|im_end|>")
    replies = [fast.encode(m["content"], add_special_tokens=False).ids + [im_end] for m in EXPECTED if m["role"] == "assistant"]
    assert trained == [t for reply in replies for t in reply]
    assert fast.decode(trained, skip_special_tokens=False) == "2<|im_end|>4, of course.<|im_end|>"


def test_real_sharegpt_samples(shared_data, tokenizer):
    _, fast = tokenizer
    stats = ReadStats()
    convs = list(read_conversations(shared_data / "sft", skip_bad=True, stats=stats))
    # 2,000 records: one with no assistant turn at all is the only one skipped.
    assert len(convs) + stats.bad_lines == 2000 and stats.bad_lines == 1, stats.bad_examples
    for conv in convs[:50]:
        ids, labels = encode_conversation(conv.messages, fast)
        assert len(ids) == len(labels) and any(label != IGNORE_INDEX for label in labels)
