"""Text helpers shared by the steps: script classes, words for Chinese and English alike, lines.

Chinese has no spaces, so a "word" here is a run of letters/digits (Latin, Cyrillic, ...) or a
single CJK character. That makes n-gram statistics (repetition, shingles, decontamination)
comparable across both languages without a segmenter::

    >>> words("GPT-4 写了 3 首诗")
    ['gpt', '4', '写', '了', '3', '首', '诗']
    >>> cjk_count("日本語のテキスト"), han_count("日本語のテキスト")
    (8, 3)

Script classes, as regex character-class bodies (use them inside ``[...]``), each defined once
here so that every step means the same thing by "Chinese character":

* ``HAN_CHARS``: Han ideographs — what the Chinese-language rules count (langid's Chinese share,
  script_ratio's Chinese rule);
* ``KANA_HANGUL_CHARS``: Japanese kana and Korean Hangul syllables — CJK script that is not
  Chinese (langid sends text full of them to "other");
* ``CJK_CHARS``: both — what ``words()`` splits into one-character words and what takes two
  columns on screen.

Also shared: digit and paragraph-break patterns, line and paragraph splitting, and the line
shape rules of the quality filters (``ends_in_terminal``, ``looks_hard_wrapped``).
"""

from __future__ import annotations

import re

# CJK Unified Ideographs (U+4E00-9FFF) and Extension A (U+3400-4DBF), the compatibility
# ideographs (U+F900-FAFF), and planes 2-3 whole: Unicode reserves them for ideographs
# (Extensions B-I and the compatibility supplement today; later extensions will land there too).
HAN_CHARS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff"
# Hiragana and Katakana (U+3040-30FF) without the two punctuation marks of the Katakana block,
# ゠ U+30A0 (double hyphen) and ・ U+30FB (middle dot, which separates names: "ジョン・スミス"),
# and Hangul syllables (U+AC00-D7AF). Half-width katakana, Katakana Phonetic Extensions and
# Hangul Jamo are left out: they stay letter runs in words(), as they always have been.
KANA_HANGUL_CHARS = "\u3040-\u309f\u30a1-\u30fa\u30fc-\u30ff\uac00-\ud7af"
CJK_CHARS = HAN_CHARS + KANA_HANGUL_CHARS

HAN_RE = re.compile(f"[{HAN_CHARS}]")
KANA_HANGUL_RE = re.compile(f"[{KANA_HANGUL_CHARS}]")
CJK_RE = re.compile(f"[{CJK_CHARS}]")
# A words() token that is not a CJK character: a run of letters/digits of any other script.
LETTER_DIGIT_RUN_RE = re.compile(f"[^\\W_{CJK_CHARS}]+")
_WORD_RE = re.compile(f"[{CJK_CHARS}]|{LETTER_DIGIT_RUN_RE.pattern}")
# Counting matches runs, not single characters: findall then allocates one string per run
# instead of one per character (4-5x faster on Chinese).
_HAN_RUN_RE = re.compile(f"[{HAN_CHARS}]+")
_KANA_HANGUL_RUN_RE = re.compile(f"[{KANA_HANGUL_CHARS}]+")
_CJK_RUN_RE = re.compile(f"[{CJK_CHARS}]+")

DIGIT_RE = re.compile(r"\d")  # any Unicode decimal digit (what str.isdecimal accepts)
ASCII_DIGIT_RE = re.compile("[0-9]")
# A blank line (spaces allowed) and the whitespace after it: what separates paragraphs.
PARAGRAPH_BREAK_RE = re.compile(r"\n[ \t\r\f\v]*\n\s*")

# Terminal punctuation, C4's . ! ? " plus ' (FineWeb) and the Chinese/full-width and curly
# closing marks. "..." and a "…" after a Latin letter are not terminal (see ends_in_terminal).
TERMINAL_PUNCTUATION = (".", "!", "?", '"', "'", "。", "！", "？", "…", "”", "’", "」", "』", "﹂", "﹄")
_CJK_OR_CJK_PUNCT_RE = re.compile(f"[{CJK_CHARS}\u3000-\u303f\uff00-\uffef“”‘’]")

# A Chinese word averages about 1.5 characters (segmented corpora such as the PKU People's
# Daily corpus measure 1.5-1.7), so 1.5 CJK characters stand for one English word wherever a
# rule counts words or n-grams.
CJK_CHARS_PER_WORD = 1.5


def words(text: str, lower: bool = True) -> list[str]:
    """Letters/digit runs and single CJK characters, in order (punctuation and spaces dropped)."""
    return _WORD_RE.findall(text.lower() if lower else text)


def _run_length(run_re: re.Pattern, text: str) -> int:
    return 0 if text.isascii() else sum(map(len, run_re.findall(text)))


def cjk_count(text: str) -> int:
    """Characters of ``CJK_CHARS`` in ``text`` (Han, kana and Hangul): its one-character words."""
    return _run_length(_CJK_RUN_RE, text)


def han_count(text: str) -> int:
    """Han ideographs in ``text``."""
    return _run_length(_HAN_RUN_RE, text)


def kana_hangul_count(text: str) -> int:
    """Kana and Hangul syllables in ``text``."""
    return _run_length(_KANA_HANGUL_RUN_RE, text)


def word_equivalents(n_words: int, n_cjk: int, cjk_chars_per_word: float = CJK_CHARS_PER_WORD) -> float:
    """A ``words()`` count with each of its ``n_cjk`` CJK characters worth 1/cjk_chars_per_word."""
    return n_words - n_cjk + n_cjk / cjk_chars_per_word


def display_columns(line: str) -> int:
    """Width of a line in a terminal: CJK characters take two columns."""
    return len(line) + cjk_count(line)


def nonempty_lines(text: str) -> list[str]:
    """The text's lines, stripped, blank ones left out."""
    return [line for line in (raw.strip() for raw in text.split("\n")) if line]


def paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks, stripped, empty ones left out."""
    return [p for p in (raw.strip() for raw in PARAGRAPH_BREAK_RE.split(text)) if p]


def paragraph_pieces(text: str) -> list[tuple[str, str]]:
    """``(paragraph, the break after it)`` pairs, unstripped; joined they give ``text`` back.

    The last paragraph's break is ``""``; a text without blank lines is one piece.
    """
    pieces, start = [], 0
    for m in PARAGRAPH_BREAK_RE.finditer(text):
        pieces.append((text[start : m.start()], m.group()))
        start = m.end()
    pieces.append((text[start:], ""))
    return pieces


def ends_in_terminal(line: str) -> bool:
    """Whether a stripped line ends a sentence (C4's rule, with Chinese punctuation).

    A trailing "..." marks a truncated line in C4 and is not terminal; "…" is terminal after
    Chinese ("他说……") and not after a Latin word ("Read more…"), for the same reason.
    """
    if not line.endswith(TERMINAL_PUNCTUATION):
        return False
    if line.endswith("..."):
        return False
    if line.endswith("…"):
        body = line.rstrip("…")
        return bool(body) and _CJK_OR_CJK_PUNCT_RE.match(body[-1]) is not None
    return True


def looks_hard_wrapped(text: str, min_soft_frac: float = 0.4, min_line_chars: int = 40) -> bool:
    """Whether ``text`` is prose broken into lines of a fixed width (e-mail, Gutenberg books).

    True when at least ``min_soft_frac`` of the breaks between two non-blank lines (and 3+ of
    them) are soft: the line before is at least ``min_line_chars`` long (wrapped lines fill most
    of the width, 60-80 characters) and the line after starts with a lowercase Latin letter
    (the sentence goes on). Verse starts lines with capitals; lists have short items; Chinese
    has no case, so Chinese text is never taken for wrapped.
    """
    breaks = soft = 0
    previous_length = 0  # stripped length of the previous line; 0 = blank
    for line in text.split("\n"):  # a loop over lines is cheaper here than two regex scans
        stripped = line.strip()
        if stripped and previous_length:
            breaks += 1
            soft += previous_length >= min_line_chars and "a" <= stripped[0] <= "z"
        previous_length = len(stripped)
    return breaks >= 3 and soft >= min_soft_frac * breaks
