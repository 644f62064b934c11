"""The ``normalize`` step: every stage on its own, its switches, its counters, and the real samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.data.document import Document
from lmforge.data.pipeline.base import Drop, StepContext
from lmforge.data.steps.normalize import Normalize, NormalizeConfig
from lmforge.data.steps.text import words


def make(tmp_path: Path, **config) -> Normalize:
    step = Normalize(NormalizeConfig(**config))
    step.setup(StepContext(base_dir=tmp_path, work_dir=tmp_path))
    return step


def test_nfkc_folds_width_but_keeps_chinese_punctuation(tmp_path):
    step = make(tmp_path)
    text = "ＧＰＴ－４ｏ 有 １２８ｋ 上下文，真的吗？是的！注意：（一）「引号」『书名』；……①发热 x² H₂O ﬁle"
    assert step.normalize(text) == "GPT-4o 有 128k 上下文，真的吗？是的！注意：（一）「引号」『书名』；……①发热 x² H₂O file"
    assert step.counters["nfkc_changed"] == 1
    assert make(tmp_path, nfkc=False).normalize("ＡＢＣ，") == "ＡＢＣ，"
    # with nothing protected, NFKC is plain NFKC
    assert make(tmp_path, nfkc_keep="").normalize("你好，世界……") == "你好,世界......"


def test_whitespace_and_control_characters(tmp_path):
    step = make(tmp_path)
    text = "a\u00a0\u00a0b\u3000c\u200bd\u202ee\x00f\r\nline  with   runs   \n\n\n\n\tindented\n    code  =  1\x0cnext"
    assert step.normalize(text) == "a b cdef\nline with runs\n\n\tindented\n    code = 1\nnext"
    assert step.counters["control_chars_removed"] == 3  # zero-width space, bidi override, NUL
    assert make(tmp_path, max_blank_lines=0).normalize("a\n\n\nb") == "a\nb"
    assert make(tmp_path, max_blank_lines=-1).normalize("a\n\n\n\nb") == "a\n\n\n\nb"
    assert make(tmp_path, collapse_spaces=False).normalize("a    b") == "a    b"
    assert make(tmp_path, clean_whitespace=False).normalize("a\u200bb  \r\nc") == "a\u200bb \r\nc"


def test_mojibake_repair_leaves_chinese_punctuation_and_quotes(tmp_path):
    step = make(tmp_path)
    assert step.normalize("cafÃ© au lait") == "café au lait"
    assert step.normalize("é”™è¯¯") == "错误"  # "错误" read as cp1252
    assert step.normalize("文本：" + "中文编码".encode("utf-8").decode("latin-1")) == "文本：中文编码"
    assert step.normalize("â€œQuotedâ€\x9d and donâ€™t") == "“Quoted” and don’t"
    assert step.normalize("\x1b[31mred\x1b[0m alert") == "red alert"  # terminal escapes, ASCII text too
    assert step.counters["mojibake_fixed"] == 5
    clean = "他说：“你好，世界！”——《天龙八部》‘单引号’…… naïve café"
    assert step.normalize(clean) == clean
    assert step.counters["mojibake_fixed"] == 5
    assert make(tmp_path, fix_mojibake=False).normalize("cafÃ©") == "cafÃ©"


def test_traditional_to_simplified_is_opt_in(tmp_path):
    assert make(tmp_path).normalize("漢字與電腦") == "漢字與電腦"
    step = make(tmp_path, t2s=True)
    assert step.normalize("說法時，常有天龍八部參與聽法。") == "说法时，常有天龙八部参与听法。"
    assert step.normalize("plain ascii") == "plain ascii"
    assert step.counters["t2s_converted"] == 1
    with pytest.raises(ValueError, match="opencc_config"):
        make(tmp_path, t2s=True, opencc_config="no-such-conversion")


def test_artefacts_and_garbled_runs(tmp_path):
    step = make(tmp_path)
    text = "说法时，崐常有天龙八部。登上崐崘山顶。坏\ufffd字\ue000。乱码ÄãºÃÂÃ结束。锟斤拷锟斤拷烫烫烫烫烫烫。表□□□□□格"
    assert step.normalize(text) == "说法时，常有天龙八部。登上崐崘山顶。坏字。乱码结束。。表格"
    assert step.counters["artefact_chars_removed"] == 3  # one 崐, U+FFFD, one private-use char
    assert step.counters["garbled_chars_removed"] == 6 + 6 + 6 + 5  # ÄãºÃÂÃ, 锟斤拷 twice, 烫 six times, □ five times
    # ordinary Latin-1 letters and short runs of symbols are text, not garbage
    kept = "Ærøskøbing, Straße, façade, 5 °C ± 2, 二○○五年, ├── src"
    assert step.normalize(kept) == kept
    custom = make(
        tmp_path, artefact_chars="崐¶", artefact_keep_words=[], garbled_min_run=0, garbled_patterns=[], nfkc=False
    )
    assert custom.normalize("崐崘¶ÄãºÃÂÃ锟斤拷") == "崘ÄãºÃÂÃ锟斤拷"


BOILERPLATE = """第一章 青衫磊落险峰行
正文 第二章 玉壁月华明
本章完
（未完待续）
上一章 | 目录 | 下一章
【返回目录】 【加入书签】
天才一秒记住本站地址：www.example.com
Copyright © 2023 Example Inc. All rights reserved.
We use cookies to improve your experience. Accept all cookies
Please enable JavaScript to view this page.
Click here to subscribe!
Skip to content
目录
The copyright of this book expired long ago, and readers may click here and there in its long index of chapters, which is no boilerplate at all because it is a long line.
他看完本章完整的内容，又翻到下一章。"""


def test_boilerplate_lines(tmp_path):
    step = make(tmp_path)
    kept = step.normalize(BOILERPLATE).split("\n")
    assert kept == [
        "第一章 青衫磊落险峰行",
        "正文 第二章 玉壁月华明",
        "目录",
        BOILERPLATE.split("\n")[-2],
        "他看完本章完整的内容，又翻到下一章。",
    ]
    assert step.counters["boilerplate_lines_removed"] == 10
    assert make(tmp_path, boilerplate_patterns=[]).normalize(BOILERPLATE) == BOILERPLATE
    # the line-length cap decides whether a matching line is boilerplate
    assert make(tmp_path, boilerplate_max_line_chars=1000).normalize(BOILERPLATE).count("\n") == 3
    # user patterns: ^...$ must cover the line; a leading "^" also matches the first line
    step = make(tmp_path, boilerplate_patterns=[r"^广告[^\n]*$", "下载app"])
    assert step.normalize("广告：买一送一\n正文\n请下载APP阅读\n广告位") == "正文"


def test_document_emptied_by_normalization_is_dropped(tmp_path):
    step = make(tmp_path)
    assert step.process(Document("a", "  \u200b\n本章完\n\ufffd\ufffd\n")) == Drop("empty_after_normalize")
    doc = step.process(Document("b", "保留\u3000这个", {"source": "x"}))
    assert doc.text == "保留 这个" and doc.metadata == {"source": "x"}


@pytest.mark.parametrize(
    "config, field",
    [
        ({"garbled_min_run": 1}, "garbled_min_run"),
        ({"max_blank_lines": -2}, "max_blank_lines"),
        ({"boilerplate_max_line_chars": 0}, "boilerplate_max_line_chars"),
        ({"boilerplate_patterns": ["(unclosed"]}, "boilerplate_patterns"),
        ({"boilerplate_patterns": ["All Rights"]}, "lower case"),
        ({"garbled_patterns": "锟斤拷"}, "garbled_patterns"),
        ({"garbled_chars": "z-a"}, "garbled_chars"),
    ],
)
def test_bad_config_names_the_field(config, field):
    with pytest.raises(ValueError, match=field):
        NormalizeConfig(**config)


def test_real_chinese_novel_loses_only_its_artefacts(tmp_path, shared_data):
    raw = (shared_data / "pretrain" / "zh_novel.txt").read_text(encoding="utf-8")
    assert raw.count("崐") > 20 and "说法时，崐常有天龙八部" in raw
    step = make(tmp_path)
    text = step.normalize(raw)
    assert "崐" not in text
    assert "说法时，常有天龙八部参与听法" in text and "皆遥见彼龙女成佛" in text
    assert text.count("，") == raw.count("，") and text.count("……") == raw.count("……")
    assert [w for w in words(raw) if w != "崐"] == words(text)  # nothing else lost
    assert step.counters["artefact_chars_removed"] == raw.count("崐")
    assert step.normalize(text) == text  # idempotent


@pytest.mark.parametrize("name", ["en_shakespeare.txt", "en_history.txt", "zh_medical.txt"])
def test_real_samples_keep_every_word(tmp_path, shared_data, name):
    raw = (shared_data / "pretrain" / name).read_text(encoding="utf-8")
    step = make(tmp_path)
    text = step.normalize(raw)
    # the only word changes are NFKC's: full-width forms and the micro sign µ → Greek μ
    folded = raw.translate(str.maketrans({"\uff0d": "-", "\uff20": "@", "µ": "μ"}))
    assert words(text) == words(folded)
    assert step.normalize(text) == text
    assert step.counters["boilerplate_lines_removed"] == 0
