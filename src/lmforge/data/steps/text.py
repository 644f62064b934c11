"""Text helpers shared by the steps: words for Chinese and English alike, character classes.

Chinese has no spaces, so a "word" here is a run of letters/digits (Latin, Cyrillic, ...) or a
single CJK character. That makes n-gram statistics (repetition, shingles, decontamination)
comparable across both languages without a segmenter::

    >>> words("GPT-4 写了 3 首诗")
    ['gpt', '4', '写', '了', '3', '首', '诗']
"""

from __future__ import annotations

import re

# CJK Unified Ideographs (+ Extension A), compatibility ideographs, Hiragana/Katakana, Hangul.
CJK_CHARS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
CJK_RE = re.compile(f"[{CJK_CHARS}]")
_WORD_RE = re.compile(f"[{CJK_CHARS}]|[^\\W_{CJK_CHARS}]+")


def words(text: str, lower: bool = True) -> list[str]:
    """Letters/digit runs and single CJK characters, in order (punctuation and spaces dropped)."""
    return _WORD_RE.findall(text.lower() if lower else text)


def cjk_count(text: str) -> int:
    return len(CJK_RE.findall(text))
