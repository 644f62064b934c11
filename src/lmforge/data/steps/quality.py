"""Heuristic quality filters for Chinese and English web, book and reference text.

Each rule comes from a published pipeline, keeps its published default, and names itself in
the drop reason, so the funnel report says which rule removed what:

* ``length_filter``: minimum/maximum characters, words and mean line width (reasons
  ``too_short``, ``mean_line_too_short``, ...).
* ``gopher_quality``: Gopher's quality rules (Rae et al. 2021, appendix A): word count, mean
  word length, ``#``/ellipsis per word, bullet and ellipsis lines, words that are not numbers, stop
  words (``gopher_too_few_words``, ``gopher_stop_words``, ...).
* ``script_ratio``: Han share for Chinese, digit and symbol shares for all (``script_cjk_ratio``,
  ``script_digit_ratio``, ``script_symbol_ratio``).
* ``c4_filter``: C4's rules (Raffel et al. 2020, section 2.2): removes lines without terminal
  punctuation, short lines, "javascript" and cookie/policy lines; drops "lorem ipsum" pages,
  pages with ``{``, pages left with too few sentences (``c4_lorem_ipsum``, ...).
* ``fineweb_filter``: FineWeb's extra rules (Penedo et al. 2024): lines ending in punctuation,
  short lines, characters in duplicated lines, list-like pages (``fineweb_short_line_frac``, ...).
* ``gopher_repetition`` (in ``repetition.py``): repeated lines, paragraphs and n-grams.

Chinese: a document's language is ``metadata["lang"]`` (set by the langid step) or, when that
is absent, "zh" if CJK characters are at least half of its letters. Where a rule counts words,
1.5 CJK characters count as one word (``cjk_chars_per_word``: Chinese words average ~1.5
characters), so "50 words" means about 75 Chinese characters; lines are measured in display
columns (a CJK character is two columns wide); terminal punctuation includes 。！？…”」』.
Documents tagged ``code`` pass these prose filters untouched unless ``skip_langs`` says otherwise.

Hard-wrapped text (books from Project Gutenberg, e-mail: a paragraph broken into ~70-column
lines) would lose nearly every line to "lines must end in punctuation". When most line breaks
inside paragraphs run into a lowercase word, the line rules apply to blank-line separated
paragraphs instead (``line_unit: auto``; ``line``/``paragraph`` force either).

Usage, in a pipeline YAML::

    steps:
      - {type: length_filter, min_chars: 200}
      - {type: gopher_quality, zh_min_stop_words: 4}
      - {type: c4_filter, min_sentences: 3}

or from Python::

    step = C4Filter(C4FilterConfig(drop_curly_bracket=False))
    step.setup(ctx)
    verdict = step.process(doc)  # the (possibly shortened) document, or drop("c4_lorem_ipsum")
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import re
from dataclasses import dataclass, field
from typing import Literal

from lmforge.data.document import Document
from lmforge.data.pipeline.base import Drop, Step, drop, register_step
from lmforge.data.steps.charclass import DIGIT, HAN, SPACE, SYMBOL, char_profile, resolve_lang
from lmforge.data.steps.repetition import duplicate_fractions
from lmforge.data.steps.text import (
    CJK_CHARS,
    CJK_CHARS_PER_WORD,
    DIGIT_RE,
    LETTER_DIGIT_RUN_RE,
    cjk_count,
    display_columns,
    ends_in_terminal,
    looks_hard_wrapped,
    nonempty_lines,
    paragraphs,
    word_equivalents,
    words,
)

# Gopher's stop words (Rae et al. 2021, A.1.1): real English prose uses at least two of them.
GOPHER_STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]
# The Chinese counterpart: function characters (particles, copula, prepositions, conjunctions)
# that any sentence of running Chinese uses and keyword lists, menus and tables do not. In the
# shared samples every 2000-character chunk of the novel contains 15+ of them and of the
# medical textbook 14+ (4 in its 80-character last chunk); a keyword-stuffed page has 0-2.
ZH_FUNCTION_CHARS = list("的了是在和有不这也就都而为以与之于其及被把从对")

# Lines starting with one of these count as bullet points (Gopher): ASCII list markers and the
# bullets and dingbats Chinese pages use for lists.
BULLETS = ("-", "*", "•", "‣", "◦", "▪", "▫", "●", "○", "■", "□", "◆", "◇", "★", "☆", "►", "▶", "➢", "✓", "✔", "※", "·")
# C4's policy lines (TFDS c4_utils) plus their Chinese equivalents; matched on lowercased lines.
POLICY_PHRASES = [
    "terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies",
    "隐私政策", "隐私条款", "隐私声明", "使用条款", "服务条款", "用户协议", "使用cookie", "cookie政策",
]

_ELLIPSIS_RE = re.compile(r"\.{3,}|…+")
# A sentence ends at 。！？ (runs count once), at a Chinese "……", or at . ! ? followed (after
# closing quotes/brackets) by a space or the end. Abbreviations ("Mr. Smith") over-count a
# little, which only matters near min_sentences.
_SENTENCE_END_RE = re.compile(r"[。！？]+|…{2,}|[.!?]+(?=[\"'”’」』)\]]*(?:\s|$))")
_BLANK_RUN_RE = re.compile(r"\n(?:[ \t]*\n)+")

LineUnit = Literal["auto", "line", "paragraph"]


def _check_fraction(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1]; got {value}")


def _check_non_negative(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and value < 0:
            raise ValueError(f"{name} must be >= 0; got {value}")


@dataclass
class ProseFilterSettings:
    """Settings shared by the filters that look at words and lines of prose."""

    # CJK characters per English-word equivalent where a rule counts words (1.5: the average
    # length of a segmented Chinese word). 1.0 counts each character as a word.
    cjk_chars_per_word: float = CJK_CHARS_PER_WORD
    # What a "line" is: "line" = each non-empty line; "paragraph" = each blank-line separated
    # block; "auto" = paragraphs for hard-wrapped documents (see hard_wrap_min_frac), else lines.
    line_unit: LineUnit = "auto"
    # "auto" takes a document for hard-wrapped when this share of its in-paragraph line breaks
    # follow a line of hard_wrap_min_line_chars+ characters and run into a lowercase word (see
    # looks_hard_wrapped). On the shared samples: the history book's chunks score 0.83 at the
    # median (0.22 for its bibliography page); Shakespeare 0 at the median and 0.5 at the 95th
    # percentile (his prose speeches, wrapped like prose: 45 of 499 chunks); Chinese 0.
    hard_wrap_min_frac: float = 0.4
    hard_wrap_min_line_chars: int = 40  # wrapped lines fill most of the width (60-80 chars)
    # Documents whose metadata["lang"] is listed pass untouched (counted as skipped_lang_<x>).
    skip_langs: list[str] = field(default_factory=lambda: ["code"])

    def __post_init__(self) -> None:
        if self.cjk_chars_per_word < 1.0:
            raise ValueError(f"cjk_chars_per_word must be >= 1; got {self.cjk_chars_per_word}")
        if self.line_unit not in ("auto", "line", "paragraph"):
            raise ValueError(f"line_unit must be 'auto', 'line' or 'paragraph'; got {self.line_unit!r}")
        _check_fraction(self, "hard_wrap_min_frac")
        _check_non_negative(self, "hard_wrap_min_line_chars")


class _ProseFilter(Step):
    """Shared by the prose filters: language lookup, skipped languages, line units."""

    def _language(self, doc: Document) -> str | None:
        """The document's language, or None (counted) when the step leaves it alone."""
        lang = resolve_lang(doc)
        if lang in self.config.skip_langs:
            self.count(f"skipped_lang_{lang}")
            return None
        return lang

    def _wrapped(self, text: str) -> bool:
        unit = self.config.line_unit
        if unit == "auto":
            wrapped = looks_hard_wrapped(text, self.config.hard_wrap_min_frac, self.config.hard_wrap_min_line_chars)
            if wrapped:
                self.count("hard_wrapped_docs")
            return wrapped
        return unit == "paragraph"

    def _units(self, text: str) -> list[str]:
        return paragraphs(text) if self._wrapped(text) else nonempty_lines(text)


# --------------------------------------------------------------------------- length_filter


@dataclass
class LengthFilterConfig:
    """Length limits; a document outside any of them is dropped. ``None`` means no limit.

    Characters are code points of the text; words are ``words()`` tokens: Latin/digit runs
    and single CJK characters (so a Chinese text has about as many "words" as characters);
    the mean line width is over non-empty lines, in display columns (a CJK character is two).
    """

    # Shorter texts are fragments (a title, a caption, "click here"): 100 characters is one
    # English sentence or two to three Chinese ones.
    min_chars: int = 100
    # No cap by default: gopher_quality caps words (100k), and books read whole are legitimate.
    max_chars: int | None = None
    min_words: int = 0  # off by default: gopher_quality's word count covers it
    max_words: int | None = None
    # Navigation menus, tag clouds and link lists average 5-8 columns a line; the shared samples
    # at least 20 (Shakespeare's verse), 50+ for prose and 85+ for Chinese paragraphs.
    min_mean_line_columns: float = 10
    max_mean_line_columns: float | None = None

    def __post_init__(self) -> None:
        _check_non_negative(
            self, "min_chars", "max_chars", "min_words", "max_words", "min_mean_line_columns", "max_mean_line_columns"
        )
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(f"max_chars ({self.max_chars}) must be >= min_chars ({self.min_chars})")
        if self.max_words is not None and self.max_words < self.min_words:
            raise ValueError(f"max_words ({self.max_words}) must be >= min_words ({self.min_words})")
        if self.max_mean_line_columns is not None and self.max_mean_line_columns < self.min_mean_line_columns:
            raise ValueError("max_mean_line_columns must be >= min_mean_line_columns")


@register_step("length_filter")
class LengthFilter(Step):
    """Drop documents that are too short or too long: characters, words, mean line width."""

    Config = LengthFilterConfig

    def process(self, doc: Document) -> Document | Drop:
        cfg = self.config
        text = doc.text
        n_chars = len(text)
        if n_chars < cfg.min_chars:
            return drop("too_short")
        if cfg.max_chars is not None and n_chars > cfg.max_chars:
            return drop("too_long")
        # A text has at most one word per character, so short texts need no counting for max_words.
        if cfg.min_words or (cfg.max_words is not None and n_chars > cfg.max_words):
            n_words = len(words(text))
            if n_words < cfg.min_words:
                return drop("too_few_words")
            if cfg.max_words is not None and n_words > cfg.max_words:
                return drop("too_many_words")
        if cfg.min_mean_line_columns or cfg.max_mean_line_columns is not None:
            lines = nonempty_lines(text)
            # CJK characters are never spaces, so counting them in the whole text is exact.
            mean = (sum(map(len, lines)) + cjk_count(text)) / max(1, len(lines))
            if mean < cfg.min_mean_line_columns:
                return drop("mean_line_too_short")
            if cfg.max_mean_line_columns is not None and mean > cfg.max_mean_line_columns:
                return drop("mean_line_too_long")
        return doc


# --------------------------------------------------------------------------- gopher_quality


@dataclass
class GopherQualityConfig(ProseFilterSettings):
    """Gopher's quality rules (Rae et al. 2021, appendix A.1.1), with Gopher's thresholds.

    A document is dropped when its word count (CJK characters weighted by cjk_chars_per_word)
    is outside [min_words, max_words]; its mean word length (Latin/digit words only; skipped
    for Chinese) is outside [min_mean_word_length, max_mean_word_length]; "#" or ellipses
    ("...", "…", "……") per word exceed max_symbol_word_ratio; more than max_bullet_lines_frac
    of its lines start with a bullet or more than max_ellipsis_lines_frac end with an ellipsis;
    fewer than min_alpha_words_frac of its words are not pure numbers (gopher_alpha_words, see
    below); or it contains fewer than min_stop_words distinct words of stop_words (English, and
    untagged non-CJK documents) or zh_min_stop_words of zh_stop_words (Chinese). Documents
    tagged with another language skip the stop-word rule: the lists are English and Chinese.

    gopher_alpha_words differs from Gopher's "words with an alphabetic character": Gopher's
    words are whitespace-separated tokens, so "|", "--" or "$5" count against it. Here words
    are ``words()`` tokens, which never consist of symbols alone, so only words made of decimal
    digits count against the rule. Whitespace tokens would not work for Chinese (a sentence
    without spaces is one token); pages heavy in symbols are script_ratio's max_symbol_ratio's
    to drop, and "#" and ellipses are counted by max_symbol_word_ratio here.
    """

    min_words: int = 50  # Gopher
    max_words: int = 100_000  # Gopher
    min_mean_word_length: float = 3.0  # Gopher
    max_mean_word_length: float = 10.0  # Gopher
    max_symbol_word_ratio: float = 0.1  # Gopher, for "#" and for ellipses separately
    max_bullet_lines_frac: float = 0.9  # Gopher
    max_ellipsis_lines_frac: float = 0.3  # Gopher
    min_alpha_words_frac: float = 0.8  # Gopher's threshold (on words that are not numbers: see above)
    stop_words: list[str] = field(default_factory=lambda: list(GOPHER_STOP_WORDS))
    min_stop_words: int = 2  # Gopher
    zh_stop_words: list[str] = field(default_factory=lambda: list(ZH_FUNCTION_CHARS))
    # Distinct function characters a Chinese document needs: real text has far more (see
    # ZH_FUNCTION_CHARS); 3 keeps short paragraphs and drops keyword lists, menus and tables.
    zh_min_stop_words: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_non_negative(
            self, "min_words", "max_words", "min_mean_word_length", "max_mean_word_length",
            "max_symbol_word_ratio", "min_stop_words", "zh_min_stop_words",
        )  # fmt: skip
        _check_fraction(self, "max_bullet_lines_frac", "max_ellipsis_lines_frac", "min_alpha_words_frac")
        if self.max_words < self.min_words:
            raise ValueError(f"max_words ({self.max_words}) must be >= min_words ({self.min_words})")
        if self.max_mean_word_length < self.min_mean_word_length:
            raise ValueError("max_mean_word_length must be >= min_mean_word_length")
        # Stop words are matched against words() tokens: one Latin word, or one CJK character.
        for name in ("stop_words", "zh_stop_words"):
            bad = [w for w in getattr(self, name) if not isinstance(w, str) or words(w) != [w.lower()]]
            if bad:
                raise ValueError(f"{name}: entries must be single words (one CJK character each); got {bad[:5]}")


@register_step("gopher_quality")
class GopherQuality(_ProseFilter):
    """Drop documents that do not look like prose by Gopher's rules (see GopherQualityConfig)."""

    Config = GopherQualityConfig

    def __init__(self, config: GopherQualityConfig | None = None, name: str | None = None) -> None:
        super().__init__(config, name)
        # Compared with words() tokens, which are lowercase.
        self._stop_words = {
            "en": frozenset(w.lower() for w in self.config.stop_words),
            "zh": frozenset(self.config.zh_stop_words),
        }

    def process(self, doc: Document) -> Document | Drop:
        cfg = self.config
        lang = self._language(doc)
        if lang is None:
            return doc
        text = doc.text
        tokens = words(text)
        n_cjk = cjk_count(text)  # every CJK character is one token
        n_words = word_equivalents(len(tokens), n_cjk, cfg.cjk_chars_per_word)
        if n_words < cfg.min_words:
            return drop("gopher_too_few_words")
        if n_words > cfg.max_words:
            return drop("gopher_too_many_words")
        mostly_cjk = lang == "zh" or 2 * n_cjk >= len(tokens)
        n_latin = len(tokens) - n_cjk
        if not mostly_cjk and n_latin:
            mean_length = (len("".join(tokens)) - n_cjk) / n_latin
            if not cfg.min_mean_word_length <= mean_length <= cfg.max_mean_word_length:
                return drop("gopher_mean_word_length")
        symbol_limit = cfg.max_symbol_word_ratio * n_words
        n_ellipses = len(_ELLIPSIS_RE.findall(text)) if "..." in text or "…" in text else 0
        if text.count("#") > symbol_limit or n_ellipses > symbol_limit:
            return drop("gopher_symbol_word_ratio")
        units = self._units(text)
        if units:
            if sum(u.startswith(BULLETS) for u in units) > cfg.max_bullet_lines_frac * len(units):
                return drop("gopher_bullet_lines")
            if sum(u.endswith(("...", "…")) for u in units) > cfg.max_ellipsis_lines_frac * len(units):
                return drop("gopher_ellipsis_lines")
        # words() never yields a symbol-only token: the words without letters are numbers.
        n_numbers = sum(map(str.isdecimal, tokens)) if DIGIT_RE.search(text) else 0
        if len(tokens) - n_numbers < cfg.min_alpha_words_frac * len(tokens):
            return drop("gopher_alpha_words")
        if lang in ("zh", "en"):
            stop_lang = "zh" if mostly_cjk else "en"
            needed = cfg.zh_min_stop_words if stop_lang == "zh" else cfg.min_stop_words
            if needed and len(self._stop_words[stop_lang].intersection(tokens)) < needed:
                return drop("gopher_stop_words")
        return doc


# --------------------------------------------------------------------------- script_ratio


@dataclass
class ScriptRatioConfig:
    """Character-class shares, over the non-whitespace characters of a document.

    Chinese documents (tagged "zh", or untagged with mostly CJK letters) are dropped when Han
    characters (``text.HAN_CHARS``: kana and Hangul do not count, so Japanese or Korean text
    tagged zh is dropped) are under zh_min_cjk_ratio; every document when digits are over
    max_digit_ratio or symbols over max_symbol_ratio. A symbol is any character that is not
    a letter (of any script), digit, space or PROSE_PUNCTUATION. 0 / 1 turn a rule off.
    """

    # Chinese prose is ~85% Han (the rest punctuation); the shared samples go down to 0.67
    # (medical text with Latin names and doses). Under half means tables, code or English with
    # a Chinese caption.
    zh_min_cjk_ratio: float = 0.5
    # Samples: at most 0.07 (medical doses) and 0.08 (a bibliography page of the history book).
    # A quarter digits is a price list, timetable or statistics dump.
    max_digit_ratio: float = 0.25
    # Samples: at most 0.05 (the history book's Gutenberg _italics_ and =headings=). Over 0.1 is
    # ASCII art, emoji spam, mojibake or markup; raise it for markdown with many tables.
    max_symbol_ratio: float = 0.1
    # Documents whose metadata["lang"] is listed pass untouched: code is mostly symbols.
    skip_langs: list[str] = field(default_factory=lambda: ["code"])

    def __post_init__(self) -> None:
        _check_fraction(self, "zh_min_cjk_ratio", "max_digit_ratio", "max_symbol_ratio")


@register_step("script_ratio")
class ScriptRatio(Step):
    """Drop documents with too few Han characters (Chinese) or too many digits or symbols."""

    Config = ScriptRatioConfig

    def process(self, doc: Document) -> Document | Drop:
        cfg = self.config
        lang = resolve_lang(doc)
        if lang in cfg.skip_langs:
            self.count(f"skipped_lang_{lang}")
            return doc
        counts = char_profile(doc.text)
        visible = len(doc.text) - counts[SPACE]
        if visible == 0:
            return drop("script_empty")
        if counts[DIGIT] > cfg.max_digit_ratio * visible:
            return drop("script_digit_ratio")
        if counts[SYMBOL] > cfg.max_symbol_ratio * visible:
            return drop("script_symbol_ratio")
        if lang == "zh" and counts[HAN] < cfg.zh_min_cjk_ratio * visible:
            return drop("script_cjk_ratio")
        return doc


# --------------------------------------------------------------------------- c4_filter


@dataclass
class C4FilterConfig(ProseFilterSettings):
    """C4's cleaning rules (Raffel et al. 2020, section 2.2; TFDS c4_utils), for both scripts.

    Line rules remove lines (paragraphs in hard-wrapped text) and keep the rest of the
    document: lines not ending in terminal punctuation, with fewer than min_words_per_line
    words (CJK characters weighted by cjk_chars_per_word), with a word (run of non-space,
    non-CJK characters) longer than max_word_length, mentioning "javascript", or containing
    one of policy_phrases. Document rules drop: "lorem ipsum" anywhere (c4_lorem_ipsum), a
    "{" anywhere (c4_curly_bracket; code is skipped through skip_langs), nothing left after
    line removal (empty_after_c4), fewer than min_sentences sentences left
    (c4_too_few_sentences). Each rule has a switch; numeric ones are off at 0.
    """

    remove_no_terminal_punct: bool = True  # C4
    min_words_per_line: float = 3  # C4 (paper): "lines that contained at least 3 words"
    max_word_length: int = 1000  # TFDS c4_utils: longer "words" are URLs, base64, garbage
    remove_javascript_lines: bool = True  # C4: "please enable Javascript" notices
    remove_policy_lines: bool = True  # C4 (TFDS): cookie and privacy-policy banners
    policy_phrases: list[str] = field(default_factory=lambda: list(POLICY_PHRASES))
    drop_lorem_ipsum: bool = True  # C4: placeholder pages
    # C4: "{" marks code. Kills code and LaTeX-heavy math, hence skip_langs: [code] by default.
    drop_curly_bracket: bool = True
    min_sentences: int = 5  # C4 (paper): "discarded any page with fewer than 5 sentences"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_non_negative(self, "min_words_per_line", "max_word_length", "min_sentences")
        if any(not isinstance(p, str) or not p for p in self.policy_phrases):
            raise ValueError("policy_phrases must be a list of non-empty strings")


@register_step("c4_filter")
class C4Filter(_ProseFilter):
    """Remove C4's bad lines and drop C4's bad pages (see C4FilterConfig)."""

    Config = C4FilterConfig

    def __init__(self, config: C4FilterConfig | None = None, name: str | None = None) -> None:
        super().__init__(config, name)
        cfg = self.config
        # Substring tests ("in") beat one alternation regex on these short phrase lists.
        self._policy_phrases = tuple({p.lower() for p in cfg.policy_phrases})
        # C4's words are whitespace-separated; Chinese has no spaces, so CJK characters end a
        # "word" too (a 1000-character paragraph is not garbage).
        self._long_word_re = re.compile(f"[^\\s{CJK_CHARS}]{{{cfg.max_word_length + 1},}}")

    def process(self, doc: Document) -> Document | Drop:
        cfg = self.config
        if self._language(doc) is None:
            return doc
        text = doc.text
        lower = text.lower()
        if cfg.drop_lorem_ipsum and "lorem ipsum" in lower:
            return drop("c4_lorem_ipsum")
        if cfg.drop_curly_bracket and "{" in text:
            return drop("c4_curly_bracket")
        # Look for each line rule's trigger in the whole text once; most documents have none.
        checks = (
            cfg.remove_javascript_lines and "javascript" in lower,
            cfg.remove_policy_lines and any(p in lower for p in self._policy_phrases),
            self._has_long_word(text),
        )
        wrapped = self._wrapped(text)
        separator = "\n\n" if wrapped else "\n"
        if wrapped:
            pieces, lowered = paragraphs(text), paragraphs(lower)
        else:
            pieces, lowered = text.split("\n"), lower.split("\n")
        kept: list[str] = []
        removed: collections.Counter[str] = collections.Counter()
        for piece, piece_lower in zip(pieces, lowered):
            unit = piece.strip()
            reason = self._line_rule(unit, piece_lower, checks) if unit else None
            if reason is None:
                kept.append(piece)
            else:
                removed[reason] += 1
        for reason, n in removed.items():
            self.count(f"c4_lines_removed_{reason}", n)
        if removed:
            text = _BLANK_RUN_RE.sub("\n\n", separator.join(kept)).strip()
            if not text:
                return drop("empty_after_c4")
        if cfg.min_sentences:
            found = sum(1 for _ in itertools.islice(_SENTENCE_END_RE.finditer(text), cfg.min_sentences))
            if found < cfg.min_sentences:
                return drop("c4_too_few_sentences")
        if removed:
            self.count("c4_docs_changed")
            return dataclasses.replace(doc, text=text)
        return doc

    def _has_long_word(self, text: str) -> bool:
        limit = self.config.max_word_length
        # str.split finds candidates at C speed; only a long one needs the CJK-aware regex.
        return bool(limit) and len(text) > limit and any(
            len(token) > limit and self._long_word_re.search(token) for token in text.split()
        )

    def _line_rule(self, unit: str, unit_lower: str, checks: tuple[bool, bool, bool]) -> str | None:
        """Why C4 removes this line (a short rule name), or None to keep it."""
        cfg = self.config
        has_javascript, has_policy, has_long_word = checks
        if cfg.remove_no_terminal_punct and not ends_in_terminal(unit):
            return "no_terminal_punct"
        if cfg.min_words_per_line:
            n_cjk = cjk_count(unit)
            n_latin = len(LETTER_DIGIT_RUN_RE.findall(unit))
            if n_latin + n_cjk / cfg.cjk_chars_per_word < cfg.min_words_per_line:
                return "too_few_words"
        if has_javascript and "javascript" in unit_lower:
            return "javascript"
        if has_policy and any(p in unit_lower for p in self._policy_phrases):
            return "policy"
        if has_long_word and self._has_long_word(unit):
            return "long_word"
        return None


# --------------------------------------------------------------------------- fineweb_filter


@dataclass
class FineWebFilterConfig(ProseFilterSettings):
    """FineWeb's quality rules (Penedo et al. 2024, section 3.3; datatrove's FineWebQualityFilter).

    A document is dropped when fewer than min_line_punct_ratio of its lines end in terminal
    punctuation (Chinese included; fineweb_line_punct_ratio); more than max_short_line_frac of
    its lines are at most short_line_columns wide, CJK characters two columns each
    (fineweb_short_line_frac); more than max_dup_line_char_frac of its line characters are in
    lines repeating an earlier one (fineweb_dup_line_char_frac); or it has more than
    max_lines_per_word lines per word, CJK characters weighted by cjk_chars_per_word
    (a list or menu; fineweb_list_ratio).
    """

    min_line_punct_ratio: float = 0.12  # FineWeb
    short_line_columns: int = 30  # FineWeb: 30 characters; a CJK character is two columns
    max_short_line_frac: float = 0.67  # FineWeb
    # FineWeb's paper/blog: 0.1 (datatrove's code default is 0.01, far stricter on dialogue).
    max_dup_line_char_frac: float = 0.1
    max_lines_per_word: float = 0.3  # FineWeb: new lines per word

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_fraction(self, "min_line_punct_ratio", "max_short_line_frac", "max_dup_line_char_frac")
        _check_non_negative(self, "short_line_columns", "max_lines_per_word")


@register_step("fineweb_filter")
class FineWebFilter(_ProseFilter):
    """Drop documents FineWeb's extra rules reject (see FineWebFilterConfig)."""

    Config = FineWebFilterConfig

    def process(self, doc: Document) -> Document | Drop:
        cfg = self.config
        if self._language(doc) is None:
            return doc
        text = doc.text
        units = self._units(text)
        if not units:
            return drop("fineweb_empty")
        if sum(map(ends_in_terminal, units)) < cfg.min_line_punct_ratio * len(units):
            return drop("fineweb_line_punct_ratio")
        # A line's width is at least its length, so only short-enough lines need their CJK counted.
        columns = cfg.short_line_columns
        short = sum(1 for u in units if len(u) <= columns and display_columns(u) <= columns)
        if short > cfg.max_short_line_frac * len(units):
            return drop("fineweb_short_line_frac")
        if duplicate_fractions(units)[1] > cfg.max_dup_line_char_frac:
            return drop("fineweb_dup_line_char_frac")
        n_words = word_equivalents(len(words(text)), cjk_count(text), cfg.cjk_chars_per_word)
        if len(units) > cfg.max_lines_per_word * n_words:
            return drop("fineweb_list_ratio")
        return doc
