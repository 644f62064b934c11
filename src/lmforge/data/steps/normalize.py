"""Text normalization for Chinese and English corpora: the ``normalize`` pipeline step.

One step, every part switchable, applied in this order (each stage feeds the next):

1. **mojibake repair** with ``ftfy`` (UTF-8 read as Latin-1/cp1252/..., e.g. "Ã©" → "é",
   "é”™è¯¯" → "错误"); ftfy's own width, quote and normalization fixes are off so they cannot
   undo the choices below (Chinese “” quotes and full-width punctuation stay);
2. **scanning artefacts and garbled runs**: configured artefact characters (default the stray
   ``崐`` of old GBK e-book scans), U+FFFD replacement characters, private-use characters, runs
   of garbled characters and known garbage sequences such as "锟斤拷";
3. **Unicode NFKC**, except for characters whose compatibility form loses meaning: Chinese
   full-width punctuation (NFKC turns "，" into ","), the ellipsis "…", circled numbers and
   super/subscript digits. Full-width letters and digits become half-width;
4. optional **traditional → simplified Chinese** with ``opencc`` (off by default);
5. **whitespace and control characters**: \\r\\n → \\n, unusual Unicode spaces → space,
   zero-width and bidi-override characters and control characters removed (\\n and \\t kept),
   runs of spaces inside a line collapsed (indentation kept, so code survives), trailing spaces
   stripped, at most ``max_blank_lines`` blank lines in a row;
6. **boilerplate lines**: short lines (``boilerplate_max_line_chars``) in which a conservative
   pattern matches ("本章完", "上一章 | 返回目录", "All rights reserved", cookie and JavaScript
   banners, ...) are removed; patterns anchored with ``^...$`` must match the whole line.

A document left empty is dropped with reason ``empty_after_normalize``. Counters:
``mojibake_fixed`` (documents), ``artefact_chars_removed``, ``garbled_chars_removed``,
``control_chars_removed`` (characters), ``nfkc_changed``, ``t2s_converted`` (documents),
``boilerplate_lines_removed`` (lines).

Usage::

    steps:
      - type: normalize
        t2s: true                  # 繁體 → 简体
        boilerplate_patterns: []   # keep every line

or from Python::

    step = Normalize(NormalizeConfig(t2s=True))
    step.setup(ctx)
    doc = step.process(Document("1", "說法時，崐常有天龍八部"))   # -> "说法时，常有天龙八部"
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

import ftfy

from lmforge.data.document import Document
from lmforge.data.pipeline.base import Drop, Step, StepContext, drop, register_step

# Characters NFKC would replace by ASCII look-alikes, losing meaning: Chinese full-width punctuation
# (the rest of 「」『』【】《》、。 is NFKC-stable already), the ellipsis, circled numbers (①→"1"
# breaks Chinese numbered lists) and super/subscript digits (x²→"x2").
DEFAULT_NFKC_KEEP = "，！？：；（）～…‥" + "①②③④⑤⑥⑦⑧⑨⑩⑪⑫⑬⑭⑮⑯⑰⑱⑲⑳" + "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾" + "₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎"

# Characters that, several in a row, are garbage rather than text: U+FFFD; Latin-1 letters,
# symbols and C1 controls (GBK or binary read as Latin-1; real European words never string five of
# these together; the no-break space is left to the whitespace stage); box drawing, block elements
# and geometric shapes ("□□□□□" stands for glyphs a scan could not read); private use. Applied
# after ftfy, so fixable mojibake is repaired, not deleted.
DEFAULT_GARBLED_CHARS = "\ufffd\u0080-\u009f\u00a1-\u00ff\u2500-\u25ff\ue000-\uf8ff"

# Well-known garbage sequences: "锟斤拷" is U+FFFD's UTF-8 bytes read as GBK; long runs of 烫/屯
# are uninitialised memory (0xCC/0xCD bytes) printed as GBK. Each pattern starts with a literal,
# which lets the regex engine skip through text at memchr speed.
DEFAULT_GARBLED_PATTERNS = ["锟斤拷(?:锟斤拷)*", "烫烫烫烫烫+", "屯屯屯屯屯+"]

# 崐 (U+5D10) is a real but rare variant of 昆, found in 崐崘 (= 昆仑, the Kunlun mountains). In
# scanned GBK e-books it is a line-wrap marker left inside sentences ("说法时，崐常有天龙八部").
# Removing it everywhere except in the mountain's name loses nothing in modern text.
DEFAULT_ARTEFACT_CHARS = "崐"
DEFAULT_ARTEFACT_KEEP_WORDS = ["崐崘", "崐崙", "崐仑"]

# Boilerplate: a line is removed when one of these regexes matches in it (they are matched against
# the lowercased text, so they are written in lower case) and the stripped line is at most
# ``boilerplate_max_line_chars`` long, so a real paragraph that mentions "copyright" or "本章" is
# never lost. Patterns anchored with ^...$ must cover the whole line. Chapter headings
# ("正文 第一章 ...") and table-of-contents titles ("目录") stay. The English patterns start with a
# literal word and check what precedes it with lookbehinds: a pattern that starts with a literal is
# found at memchr speed, an alternation of words is tried at every position. "(?=(X*))\1" is X*
# without backtracking (an atomic group that works before Python 3.11): an indented line of code
# then fails once, not once per leading space.
_NAV = (
    r"上一章|下一章|上一页|下一页|上一篇|下一篇|上一节|下一节|返回目录|回到目录|返回书页|返回书架|"
    r"返回列表|加入书签|投推荐票|返回顶部|回到顶部|章节列表"
)
_NAV_SEP = r"[ \t|｜/·•,，、<>«»←→\-\[\]【】()（）]"
DEFAULT_BOILERPLATE_PATTERNS = [
    # end-of-chapter markers alone on a line: 本章完 / （未完待续） / 全书完
    r"^(?=([^\w\n]*))\1(?:本章完|本章结束|本章终|全文完|全书完|全文终|未完待续|待续)[^\w\n]*$",
    # navigation bars: 上一章 | 目录 | 下一章
    rf"^(?=((?:{_NAV_SEP}|目录|首页|书架)*))\1(?:{_NAV})(?:{_NAV_SEP}|{_NAV}|目录|首页|书架)*$",
    # what pirate novel sites insert between paragraphs
    r"一秒记住|本书首发|首发网址|手机用户请(?:浏览|访问)|请点击下一页继续阅读|本章未完[，,]?[ \t]*请点击",
    r"版权所有|保留所有权利|未经(?:许可|授权)[，,]?[ \t]*(?:严禁|不得|禁止)(?:转载|复制)|转载请注明(?:出处|来源)",
    r"all rights reserved",
    r"copyright[ \t]*(?:©|\(c\)|\d{4})",
    r"©[ \t]*(?:\d{4}|copyright)",
    r"click here\b",
    r"cookies?(?:(?<=use cookies)|(?<=uses cookies)|(?<=accept cookies)|(?<=accept all cookies)"
    r"| (?:policy|settings|preferences|consent)\b)",
    r"javascript(?:(?<=enable javascript)|(?<=requires javascript)|(?<=turn on javascript)"
    r"|(?<=activate javascript)| (?:is )?(?:disabled|required|not enabled|must be enabled))",
    r"^(?=([^\w\n]*))\1(?:skip to (?:main )?content|back to top|share (?:this|on (?:facebook|twitter|linkedin))"
    r"|(?:sign up|subscribe) (?:for|to) (?:our|the) newsletter)[^\w\n]*$",
]

# Unusual spaces become " "; line and paragraph separators, vertical tab, form feed and NEL become
# "\n"; zero-width characters, soft hyphens, BOMs, bidi embedding/override/isolate controls (the
# "Trojan Source" characters) and noncharacters are invisible and go. ZWJ/ZWNJ stay: emoji and
# Indic/Persian scripts need them.
_SPACES = "\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000"
_NEWLINES = "\u2028\u2029\u0085\x0b\x0c"
_INVISIBLE = "\u200b\u2060\ufeff\u00ad\u202a-\u202e\u2066-\u2069\ufdd0-\ufdef\ufffe\uffff"
_CONTROL = "\x00-\x08\x0e-\x1f\x7f\x80-\x84\x86-\x9f"  # \t \n kept; \r handled first

# One pass finds every character the whitespace stage changes; the map says what each becomes
# (characters not in it are removed).
_WHITESPACE_RE = re.compile(f"[{_SPACES}{_NEWLINES}{_INVISIBLE}{_CONTROL}]+")
_ASCII_CONTROLS = "".join(map(chr, [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F]))
_ASCII_WHITESPACE_RE = re.compile(f"[{re.escape(_ASCII_CONTROLS)}]+")  # the same, for pure-ASCII text
_WHITESPACE_MAP = {
    **{c: " " for c in re.findall(f"[{_SPACES}]", "".join(map(chr, range(0x3001))))},
    **{c: "\n" for c in re.findall(f"[{_NEWLINES}]", "".join(map(chr, range(0x3001))))},
}
# two spaces after a non-space (a run inside a line, not indentation), and the spaces that follow;
# the pattern starts with a literal, so runs are found at memchr speed
_SPACE_RUN_RE = re.compile("  (?<=\\S  ) *")
_REPLACEMENT_AND_PRIVATE_RE = re.compile("[\ufffd\ue000-\uf8ff\U000f0000-\U0010ffff]+")

# Lines without any of these cannot hold mojibake ftfy would fix (UTF-8 lead bytes read as Latin-1,
# cp125x, MacRoman or cp437 all land here; so do C1 controls, terminal escapes and surrogates), so
# only lines with one of them go through ftfy, which is slow (a few MB/s).
_MOJIBAKE_SUSPECT_RE = re.compile(
    "[\x1b\x80-\u024f\u02c6\u02dc\u0370-\u03ff\u0400-\u04ff\u2500-\u259f\ud800-\udfff]"
)

# ftfy settings that repair encodings only: its width, quote, ligature, line-break, control-char
# and Unicode normalization fixes are this step's own stages (or deliberately not done).
_FTFY_CONFIG = ftfy.TextFixerConfig(
    unescape_html=False,  # "&amp;" in code and plain text is content, not markup
    fix_latin_ligatures=False,
    fix_character_width=False,  # would turn Chinese "，" into ","
    uncurl_quotes=False,  # “” are the standard Chinese quotation marks
    fix_line_breaks=False,
    remove_control_chars=False,
    normalization=None,
    explain=False,
)


@dataclass
class NormalizeConfig:
    # repair mojibake (UTF-8 decoded with the wrong codec) with ftfy; only suspicious lines are checked
    fix_mojibake: bool = True
    # remove these characters wherever they occur (scanning artefacts); default the stray 崐 of GBK e-books
    artefact_chars: str = DEFAULT_ARTEFACT_CHARS
    # words in which an artefact character is a real character and stays (崐崘 = 昆仑)
    artefact_keep_words: list[str] = field(default_factory=lambda: list(DEFAULT_ARTEFACT_KEEP_WORDS))
    # remove U+FFFD replacement characters and private-use characters (they render as nothing or boxes)
    remove_replacement_and_private_use: bool = True
    # regex character class (without brackets) of characters that are garbage when several appear in a row
    garbled_chars: str = DEFAULT_GARBLED_CHARS
    # runs of at least this many garbled characters are removed; 0 disables run removal
    garbled_min_run: int = 5
    # regexes of known garbage sequences removed wherever they occur ("锟斤拷"); start them with a literal
    garbled_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_GARBLED_PATTERNS))
    # Unicode NFKC (full-width letters/digits → half-width, ligatures split, compatibility forms folded)
    nfkc: bool = True
    # characters NFKC leaves alone: Chinese full-width punctuation, ellipsis, ①–⑳, super/subscripts
    nfkc_keep: str = DEFAULT_NFKC_KEEP
    # convert traditional to simplified Chinese with opencc; off because it rewrites text meant to be traditional
    t2s: bool = False
    # the opencc conversion to use when t2s is on (t2s, tw2s, hk2s, tw2sp, ...)
    opencc_config: str = "t2s"
    # \r\n → \n, unusual spaces → " ", invisible and control characters removed, trailing spaces stripped
    clean_whitespace: bool = True
    # collapse runs of spaces inside a line to one; leading indentation is never touched, so code
    # keeps its structure (only column alignment inside lines is lost)
    collapse_spaces: bool = True
    # at most this many blank lines in a row (1 keeps paragraph breaks); -1 leaves blank lines alone
    max_blank_lines: int = 1
    # a line is removed when one of these regexes (lower case, matched in multiline mode against the
    # lowercased text) matches in it; [] keeps every line
    boilerplate_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_BOILERPLATE_PATTERNS))
    # ... and the stripped line is at most this long: boilerplate is short, paragraphs that quote it are not
    boilerplate_max_line_chars: int = 120

    def __post_init__(self) -> None:
        if self.garbled_min_run < 0 or self.garbled_min_run == 1:
            raise ValueError(f"normalize: garbled_min_run must be 0 (off) or >= 2, got {self.garbled_min_run}")
        if self.max_blank_lines < -1:
            raise ValueError(f"normalize: max_blank_lines must be >= 0 (-1: no limit), got {self.max_blank_lines}")
        if self.boilerplate_max_line_chars < 1:
            raise ValueError(
                f"normalize: boilerplate_max_line_chars must be >= 1, got {self.boilerplate_max_line_chars}"
            )
        for name in ("artefact_chars", "nfkc_keep", "garbled_chars", "opencc_config"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"normalize: {name} must be a string, got {getattr(self, name)!r}")
        for name in ("artefact_keep_words", "garbled_patterns", "boilerplate_patterns"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
                raise ValueError(f"normalize: {name} must be a list of non-empty strings, got {value!r}")
        if self.garbled_min_run:
            _compile("garbled_chars", f"[{self.garbled_chars}]")
        for pattern in self.garbled_patterns:
            _compile("garbled_patterns", pattern)
        for pattern in self.boilerplate_patterns:
            _compile("boilerplate_patterns", pattern, re.MULTILINE)
            if re.search("[A-Z]", re.sub(r"\\\\.", "", pattern)):
                raise ValueError(
                    "normalize: boilerplate_patterns are matched against lowercased text; "
                    f"write {pattern!r} in lower case"
                )


def _compile(field_name: str, pattern: str, flags: int = 0) -> re.Pattern:
    try:
        return re.compile(pattern, flags)
    except re.error as e:
        raise ValueError(f"normalize: bad regex in {field_name}: {pattern!r}: {e}") from None


@register_step("normalize")
class Normalize(Step):
    Config = NormalizeConfig

    def setup(self, ctx: StepContext) -> None:
        cfg: NormalizeConfig = self.config
        self._artefact_re = re.compile(f"[{re.escape(cfg.artefact_chars)}]") if cfg.artefact_chars else None
        # (keep-word, offset of the artefact character in it) for each artefact character
        self._artefact_keep = {
            c: [(word, i) for word in cfg.artefact_keep_words for i, ch in enumerate(word) if ch == c]
            for c in cfg.artefact_chars
        }
        self._garbled_res = [_compile("garbled_patterns", p) for p in cfg.garbled_patterns]
        self._garbled_run_re = None
        if cfg.garbled_min_run:
            self._garbled_run_re = re.compile(f"[{cfg.garbled_chars}]{{{cfg.garbled_min_run},}}")
            self._garbled_char_re = re.compile(f"[{cfg.garbled_chars}]")
            # pure-ASCII text (most English) cannot hold a run unless the class admits ASCII
            self._garbled_run_on_ascii = bool(self._garbled_char_re.search("".join(map(chr, range(128)))))
        self._nfkc_keep_re = re.compile(f"([{re.escape(cfg.nfkc_keep)}]+)") if cfg.nfkc_keep else None
        self._opencc = None
        if cfg.t2s:
            import opencc

            try:
                self._opencc = opencc.OpenCC(cfg.opencc_config)
            except Exception as e:  # opencc raises RuntimeError for an unknown configuration
                raise ValueError(f"normalize: opencc_config {cfg.opencc_config!r} is not available: {e}") from None
        # Separate patterns, not one alternation: the regex engine's literal-prefix search only
        # works on a pattern of its own. A leading "^" is searched as "\n" (the text gets one in
        # front): a literal is found at memchr speed, while "^" is tested at every position. The
        # IGNORECASE twins serve the rare text whose lowercase has another length ("İ"), where
        # positions in the lowercased copy would not line up with the text.
        sources = ["\n" + p[1:] if p.startswith("^") else p for p in cfg.boilerplate_patterns]
        self._boilerplate_res = [re.compile(p, re.MULTILINE) for p in sources]
        self._boilerplate_res_ignorecase = [re.compile(p, re.MULTILINE | re.IGNORECASE) for p in sources]
        self._blank_lines_re = None
        if cfg.max_blank_lines >= 0:
            # "\n" * (n + 1) then "\n+": a literal prefix, and more than n blank lines
            self._blank_lines_re = re.compile("\n" * (cfg.max_blank_lines + 1) + "\n+")
            self._blank_lines_to = "\n" * (cfg.max_blank_lines + 1)

    def process(self, doc: Document) -> Document | Drop:
        text = self.normalize(doc.text)
        if not text.strip():
            return drop("empty_after_normalize")
        # a new Document, not doc.text = ...: the executor counts a document as changed by
        # comparing the text it handed in with the text it gets back
        return doc if text == doc.text else Document(doc.id, text, doc.metadata)

    def normalize(self, text: str) -> str:
        """The normalized form of ``text``, counting what changed in this step's counters.

        Leading blank lines and trailing whitespace of the whole text always go.
        """
        cfg: NormalizeConfig = self.config
        if cfg.clean_whitespace and "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if cfg.fix_mojibake:
            text = self._fix_mojibake(text)
        text = self._remove_artefacts(text)
        if cfg.nfkc and not unicodedata.is_normalized("NFKC", text):
            text = self._nfkc(text)
        if self._opencc is not None and not text.isascii():
            converted = self._opencc.convert(text)
            if converted != text:
                self.count("t2s_converted")
                text = converted
        if cfg.clean_whitespace:
            text = self._clean_whitespace(text)
        if cfg.collapse_spaces and "  " in text:
            text = self._collapse_spaces(text)
        if self._boilerplate_res:
            text = self._remove_boilerplate(text)
        if cfg.clean_whitespace and (" \n" in text or "\t\n" in text or text.endswith((" ", "\t"))):
            # per line in Python beats a regex here: spaces are everywhere, so "[ \t]+(?=\n)" is
            # tried at every one of them
            text = "\n".join(line.rstrip(" \t") for line in text.split("\n"))
        if self._blank_lines_re is not None:
            text = self._blank_lines_re.sub(self._blank_lines_to, text)
        return text.lstrip("\n").rstrip()

    def _fix_mojibake(self, text: str) -> str:
        """ftfy on the lines that could hold mojibake; all other lines pass through untouched."""
        if (text.isascii() and "\x1b" not in text) or not _MOJIBAKE_SUSPECT_RE.search(text):
            return text
        pieces: list[str] = []
        done = 0  # text[:done] is already in pieces
        for m in _MOJIBAKE_SUSPECT_RE.finditer(text):
            if m.start() < done:
                continue  # on a line already fixed
            start = text.rfind("\n", 0, m.start()) + 1
            end = text.find("\n", m.start())
            end = len(text) if end < 0 else end
            pieces.append(text[done:start])
            pieces.append(ftfy.fix_text(text[start:end], _FTFY_CONFIG))
            done = end
        pieces.append(text[done:])
        fixed = "".join(pieces)
        if fixed != text:
            self.count("mojibake_fixed")
        return fixed

    def _remove_artefacts(self, text: str) -> str:
        ascii_only = text.isascii()
        if self._artefact_re is not None and any(c in text for c in self.config.artefact_chars):
            removed = 0

            def remove_unless_in_keep_word(m: re.Match) -> str:
                nonlocal removed
                at = m.start()
                for word, offset in self._artefact_keep[m.group()]:
                    if at >= offset and text.startswith(word, at - offset):
                        return m.group()
                removed += 1
                return ""

            text = self._artefact_re.sub(remove_unless_in_keep_word, text)
            if removed:
                self.count("artefact_chars_removed", removed)
        before = len(text)
        if self._garbled_run_re is not None and (self._garbled_run_on_ascii or not ascii_only):
            if self._garbled_char_re.search(text):  # a one-character search stops at the first hit
                text = self._garbled_run_re.sub("", text)
        for pattern in self._garbled_res:
            text = pattern.sub("", text)
        if len(text) != before:
            self.count("garbled_chars_removed", before - len(text))
        if self.config.remove_replacement_and_private_use and not ascii_only:
            before = len(text)
            text = _REPLACEMENT_AND_PRIVATE_RE.sub("", text)
            if len(text) != before:
                self.count("artefact_chars_removed", before - len(text))
        return text

    def _nfkc(self, text: str) -> str:
        """NFKC on everything but runs of protected characters (re.split puts those at odd indexes)."""
        if self._nfkc_keep_re is None:
            normalized = unicodedata.normalize("NFKC", text)
        elif unicodedata.is_normalized("NFKC", self._nfkc_keep_re.sub("", text)):
            return text  # only the protected characters are not NFKC (the common case: "…" in Chinese)
        else:
            parts = self._nfkc_keep_re.split(text)
            parts[::2] = [unicodedata.normalize("NFKC", p) for p in parts[::2]]
            normalized = "".join(parts)
        if normalized != text:
            self.count("nfkc_changed")
        return normalized

    def _clean_whitespace(self, text: str) -> str:
        removed = 0

        def replace(m: re.Match) -> str:
            nonlocal removed
            out = "".join(_WHITESPACE_MAP.get(c, "") for c in m.group())
            removed += len(m.group()) - len(out)
            return out

        if text.isascii():
            # pure ASCII: only C0 controls can be here, and 30 substring tests beat one regex scan
            if any(c in text for c in _ASCII_CONTROLS):
                text = _ASCII_WHITESPACE_RE.sub(replace, text)
        elif _WHITESPACE_RE.search(text):
            text = _WHITESPACE_RE.sub(replace, text)
        if removed:
            self.count("control_chars_removed", removed)
        return text

    @staticmethod
    def _collapse_spaces(text: str) -> str:
        return _SPACE_RUN_RE.sub(" ", text)

    def _remove_boilerplate(self, text: str) -> str:
        """Drop every short line a boilerplate pattern matches in (all lines a multi-line match spans)."""
        limit = self.config.boilerplate_max_line_chars
        lowered = text.lower()
        # the "\n" in front lets patterns whose "^" became "\n" match the first line too
        if len(lowered) == len(text):
            haystack, patterns = "\n" + lowered, self._boilerplate_res
        else:
            haystack, patterns = "\n" + text, self._boilerplate_res_ignorecase
        doomed: dict[int, int] = {}  # line start -> line end (the index of its "\n"), in text
        for pattern in patterns:
            for m in pattern.finditer(haystack):
                start, end = m.span()
                while start < end and haystack[start] == "\n":
                    start += 1  # newlines at the edges of a match belong to the neighbouring lines
                while end > start and haystack[end - 1] == "\n":
                    end -= 1
                start, end = start - 1, end - 1  # haystack -> text coordinates
                lines = []
                line_start = text.rfind("\n", 0, start) + 1
                while True:
                    line_end = text.find("\n", line_start)
                    line_end = len(text) if line_end < 0 else line_end
                    lines.append((line_start, line_end))
                    if line_end >= end or line_end == len(text):
                        break
                    line_start = line_end + 1
                if all(len(text[a:b].strip()) <= limit for a, b in lines):
                    doomed.update(lines)
        if not doomed:
            return text
        self.count("boilerplate_lines_removed", len(doomed))
        pieces, done = [], 0
        for start in sorted(doomed):
            pieces.append(text[done:start])
            done = doomed[start] + 1  # the line and its newline
        pieces.append(text[done:])
        return "".join(pieces)
