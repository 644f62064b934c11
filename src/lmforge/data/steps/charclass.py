"""Character classes of a text in one pass, and the language rules built on them.

``char_profile`` counts every character of a text into one of seven classes — whitespace,
digits, Han ideographs, kana/Hangul, letters of other scripts, prose punctuation, symbols —
with one lookup per character in a table covering all of Unicode. The quality filters use it
for their share rules (``script_ratio``) and to tell Chinese from English when a document has
no ``metadata["lang"]``::

    counts = char_profile("Hi, 世界! 12 ★")
    counts[HAN], counts[DIGIT], counts[SYMBOL]     # 2, 2, 1
    is_mostly_cjk("日本語のテキスト")                # True: CJK script, whatever the language
    resolve_lang(Document("a", "铁路的发展"))        # "zh" (metadata["lang"] wins when set)

Han and kana/Hangul are ``text.HAN_CHARS`` and ``text.KANA_HANGUL_CHARS``, the classes every
step shares.
"""

from __future__ import annotations

import functools
import re
import unicodedata

import numpy as np

from lmforge.data.document import Document
from lmforge.data.steps.text import HAN_CHARS, KANA_HANGUL_CHARS

# Punctuation of ordinary prose in both scripts (・ and ゠ of Japanese-style names and ranges
# included), and units (% ‰ ° ℃) and range marks (~) of science text: not symbols for
# script_ratio. Everything else that is not a letter, digit or space is (#, *, =, |, @, $, <, >,
# emoji, box drawing, dingbats, private-use characters, ...).
PROSE_PUNCTUATION = ".,;:!?'\"()[]-–—…/%&~‰°℃" + "。，、；：！？“”‘’（）《》〈〉【】「」『』·～・゠"

# Classes, as indices into char_profile's counts.
SPACE, DIGIT, HAN, KANA_HANGUL, LETTER, PROSE, SYMBOL = range(7)
N_CLASSES = 7


def _char_class(ch: str) -> int:
    """The class of one character, Han and kana/Hangul aside (the table adds them from text.py)."""
    if ch.isspace():
        return SPACE
    if ch.isdecimal():  # what the regex \d matches
        return DIGIT
    if ch in PROSE_PUNCTUATION:
        return PROSE
    # Letters, combining marks (part of their letters) and other numbers (Ⅻ ½ ²) are word
    # material; the rest — S*, P* outside PROSE_PUNCTUATION, C*, "_" — are symbols.
    return LETTER if unicodedata.category(ch)[0] in "LMN" else SYMBOL


@functools.cache
def _char_class_table() -> np.ndarray:
    """Class of every code point, as uint8; built once per process (~0.1 s)."""
    table = np.full(0x110000, SYMBOL, dtype=np.uint8)
    table[:0x10000] = [_char_class(chr(cp)) for cp in range(0x10000)]
    # Beyond the BMP, classifying 1M code points one by one would take ~0.5 s; what occurs in
    # text there is emoji and pictographs (symbols) and rare Han ideographs (planes 2-3, which
    # the Han class covers below). Letters of historic scripts there count as symbols.
    every_char = np.arange(0x110000, dtype="<u4").tobytes().decode("utf-32-le", "surrogatepass")
    for cls, chars in ((HAN, HAN_CHARS), (KANA_HANGUL, KANA_HANGUL_CHARS)):
        for m in re.finditer(f"[{chars}]+", every_char):
            table[m.start() : m.end()] = cls
    return table


def char_profile(text: str) -> np.ndarray:
    """Counts of SPACE, DIGIT, HAN, KANA_HANGUL, LETTER (other scripts), PROSE punctuation and
    SYMBOL characters in ``text``, via a code-point lookup table: ~20 µs for 2 kB in either
    script, where a regex per class costs ~100 µs each."""
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return np.bincount(_char_class_table()[codes], minlength=N_CLASSES)


def is_mostly_cjk(text: str) -> bool:
    """True when CJK characters (Han, kana, Hangul) are at least half of the text's letters."""
    if text.isascii():
        return False
    counts = char_profile(text)
    cjk = counts[HAN] + counts[KANA_HANGUL]
    return 2 * cjk >= cjk + counts[LETTER]


def resolve_lang(doc: Document) -> str:
    """``metadata["lang"]`` when set; otherwise "zh" for mostly-CJK text and "en" for the rest."""
    lang = doc.metadata.get("lang")
    if isinstance(lang, str) and lang:
        return lang
    return "zh" if is_mostly_cjk(doc.text) else "en"
