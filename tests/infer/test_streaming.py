"""Text streaming: UTF-8-safe pieces, stop strings held back, chat rendering — with a scripted model.

``ScriptedModel`` is a real tiny transformer (so the KV cache machinery runs) whose logits are
replaced to emit a fixed token script: the text the engine should stream is known exactly.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoTokenizer

from lmforge.infer import Engine, IncrementalDecoder, SamplingConfig
from lmforge.model import ModelConfig, ModelOutput, Transformer

CHINESE = "你好，世界。今天天气很好，我们一起学习语言模型。"


class ScriptedModel(Transformer):
    def __init__(self, vocab_size: int, script: list[int]) -> None:
        super().__init__(ModelConfig(vocab_size=vocab_size, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=256))
        self.script = script
        self.calls = 0

    def forward(self, input_ids, **kwargs) -> ModelOutput:
        out = super().forward(input_ids, **kwargs)
        logits = torch.full_like(out.logits, -10.0)
        logits[..., self.script[min(self.calls, len(self.script) - 1)]] = 10.0
        self.calls += 1
        return ModelOutput(logits=logits, aux_loss=out.aux_loss)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _engine(tokenizer, text: str, end: str = "<|im_end|>") -> Engine:
    script = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.convert_tokens_to_ids(end)]
    return Engine(ScriptedModel(len(tokenizer), script), tokenizer)


def test_chinese_characters_are_split_across_tokens(tokenizer):
    # The precondition of the streaming tests: single tokens decode to broken characters.
    ids = tokenizer.encode(CHINESE, add_special_tokens=False)
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)


def test_incremental_decoder_never_emits_broken_characters(tokenizer):
    for text in (CHINESE, "mixed 中文 and English, emoji 🙂 too: 你好!", "plain ascii text"):
        ids = tokenizer.encode(text, add_special_tokens=False)
        decoder = IncrementalDecoder(tokenizer)
        pieces = [decoder.push(i) for i in ids]
        pieces.append(decoder.flush())
        assert all("\ufffd" not in p for p in pieces)
        assert "".join(pieces) == text
        assert sum(1 for p in pieces if p) > 3  # it really streams, not one piece at the end


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_incremental_decoder_decodes_as_the_tokenizer_does(tokenizer, skip_special_tokens):
    # It calls the Rust backend directly (transformers' wrapper costs more than decoding);
    # whatever it streams must still add up to the tokenizer's own decode, special tokens included.
    special = tokenizer.all_special_ids
    assert special
    ids = tokenizer.encode("mixed 中文 and English 🙂", add_special_tokens=False)
    ids = [special[0], *ids[:5], special[-1], *ids[5:], special[0]]
    decoder = IncrementalDecoder(tokenizer, skip_special_tokens=skip_special_tokens)
    assert decoder._backend is not None
    text = "".join(decoder.push(i) for i in ids) + decoder.flush()
    assert text == tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def test_incremental_decoder_keeps_a_tokenizers_own_decoding(tokenizer):
    # A subclass that decodes its own way (CodeGen's tokenizer does), or space clean-up, must go
    # through tokenizer.decode, not the backend.
    class Shouting(type(tokenizer)):
        def _decode(self, *args, **kwargs):
            return super()._decode(*args, **kwargs).upper()

    shouting = copy.copy(tokenizer)
    shouting.__class__ = Shouting
    decoder = IncrementalDecoder(shouting)
    assert decoder._backend is None
    assert "".join(decoder.push(i) for i in tokenizer.encode("plain ascii", add_special_tokens=False)) + decoder.flush() == "PLAIN ASCII"
    cleaning = copy.copy(tokenizer)
    cleaning.clean_up_tokenization_spaces = True
    assert IncrementalDecoder(cleaning)._backend is None


def test_incremental_decoder_releases_invalid_bytes_instead_of_stalling(tokenizer):
    lone_byte = tokenizer.encode("你", add_special_tokens=False)[0]  # first byte of a 3-byte char
    decoder = IncrementalDecoder(tokenizer, max_pending=4)
    pieces = [decoder.push(lone_byte) for _ in range(6)]
    assert pieces[:3] == ["", "", ""] and any(pieces[3:])


def test_stream_text_on_chinese_output(tokenizer):
    engine = _engine(tokenizer, CHINESE)
    pieces = list(engine.stream_text([1, 5, 6], SamplingConfig(temperature=0, max_new_tokens=100)))
    assert "".join(pieces) == CHINESE
    assert all(p and "\ufffd" not in p for p in pieces)


def test_stream_holds_back_a_possible_stop_string_and_drops_it(tokenizer):
    text = "答案是 42。\n\n问题：下一个"
    engine = _engine(tokenizer, text)
    cfg = SamplingConfig(temperature=0, max_new_tokens=100, stop=["\n\n问"])
    pieces = list(engine.stream_text([1, 5], cfg))
    assert "".join(pieces) == "答案是 42。"
    result = _engine(tokenizer, text).generate([[1, 5]], cfg)[0]
    assert (result.text, result.finish_reason, result.stop_reason) == ("答案是 42。", "stop", "\n\n问")


def test_held_back_text_is_released_when_the_stop_string_does_not_complete(tokenizer):
    text = "a\nb\n\nc"
    engine = _engine(tokenizer, text)
    pieces = list(engine.stream_text([1], SamplingConfig(temperature=0, max_new_tokens=100, stop=["\nX"])))
    assert "".join(pieces) == text


def test_max_new_tokens_mid_character_flushes_what_is_there(tokenizer):
    engine = _engine(tokenizer, "你")  # one character, several byte tokens
    n = len(tokenizer.encode("你", add_special_tokens=False))
    assert n > 1
    result = engine.generate([[1]], SamplingConfig(temperature=0, max_new_tokens=n - 1))[0]
    assert result.finish_reason == "length" and len(result.token_ids) == n - 1 and result.text.startswith("\ufffd")


def test_chat_renders_the_template_and_stops_at_im_end(tokenizer):
    engine = _engine(tokenizer, "我很好，谢谢！")
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "你好吗？"}]
    ids = engine.encode_chat(messages)
    rendered = tokenizer.decode(ids)
    assert rendered == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n你好吗？<|im_end|>\n<|im_start|>assistant\n"
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3  # special tokens stay single ids
    assert engine.chat(messages, SamplingConfig(temperature=0)) == "我很好，谢谢！"
    engine.model.calls = 0
    assert "".join(engine.chat_stream(messages, SamplingConfig(temperature=0))) == "我很好，谢谢！"


def test_steps_reports_events_for_each_request(tokenizer):
    engine = _engine(tokenizer, "hi!", end="<|endoftext|>")
    steps = list(engine.steps([[1, 2], [3]], SamplingConfig(temperature=0, max_new_tokens=50)))
    last = steps[-1]
    assert [e.index for e in last] == [0, 1]
    assert all(e.token_id is None and e.finish_reason == "stop" for e in last)
    assert all(e.finish_reason is None for events in steps[:-1] for e in events)
    for row in (0, 1):
        assert "".join(events[row].text for events in steps) == "hi!"


def test_complete_with_empty_prompt_starts_from_eos(tokenizer):
    engine = _engine(tokenizer, "ok")
    assert engine.encode("") == [tokenizer.eos_token_id]
    assert engine.complete("", SamplingConfig(temperature=0)) == "ok"


def test_complete_takes_one_text_or_a_batch(tokenizer):
    assert _engine(tokenizer, "ok").complete(["a", "bc"], SamplingConfig(temperature=0)) == ["ok", "ok"]
    assert _engine(tokenizer, "ok").complete("a", SamplingConfig(temperature=0)) == "ok"
