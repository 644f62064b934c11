"""Language identification without a model: the ``langid`` pipeline step (zh / en / code / other).

Three cheap signals decide, computed on at most ``sample_chars`` of each document (a few
windows spread over it, so a long file costs no more than a short one):

* **code-likeness**: the share of non-blank lines that look like source code (``def``/``class``/
  ``import``/``#include``/``function`` lines, assignments, calls, lines ending in ``{`` ``;``
  ``}``, operators such as ``==`` ``->`` ``&&``, indentation). Comments and doctest lines count
  for neither side, so a Python file with long docstrings is still code while a docstring on
  its own (prose with a few ``>>>`` examples) is English;
* **script statistics**: the share of Han characters (``text.HAN_CHARS``) among all letters
  (Chinese), with kana and Hangul (``text.KANA_HANGUL_CHARS``: Japanese, Korean) and non-Latin
  alphabets (Cyrillic, Greek, Arabic, ...) sending a document to ``other``;
* **function words**: for Latin-script text, the share of words that are English function words
  ("the", "of", "and", ...) against the same share for German, French, Spanish, Italian,
  Portuguese and Dutch, so a German man page is ``other``, not ``en``.

The step writes ``metadata["lang"]`` (``zh``, ``en``, ``code`` or ``other``) and
``metadata["lang_score"]`` (a confidence in [0, 1]: the code-line share for code, the Han share
for Chinese, Latin share × English function-word strength for English, one minus the best of those
for other) and counts every language seen. Documents whose language is not in ``allowed`` are
dropped with reason ``lang_<x>``; ``allowed: []`` only tags.

Usage::

    steps:
      - type: langid
        allowed: [zh, en]        # drop code and other languages
      - type: langid
        allowed: []              # tag only

or from Python: ``identify_language("import os\\ndef f(x):\\n    return x")`` → ``("code", 1.0)``.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field

from lmforge.data.document import Document
from lmforge.data.pipeline.base import Drop, Step, StepContext, drop, register_step
from lmforge.data.steps.text import han_count, kana_hangul_count

LANGUAGES = ("zh", "en", "code", "other")

_LETTER_RUN_RE = re.compile(r"[^\W\d_]+")  # letters of any script, CJK included
# Latin-script words (ASCII letters, Latin-1 and Latin Extended-A/B) with an English-style
# apostrophe suffix ("don't"), lowercased before matching: what the function-word lists hold.
_LATIN_SCRIPT_WORD_RE = re.compile("[a-z\u00df-\u00f6\u00f8-\u00ff\u0100-\u024f]+(?:'[a-z]+)?")

# The most frequent function words of each language. English's list is longer on purpose: it is
# the language we accept; the others only need to outscore it on their own text.
FUNCTION_WORDS: dict[str, frozenset[str]] = {
    "en": frozenset(
        """the of and to a in is that it for was on as with he be by at are this his which from or
        had not but have an they you were their one all we can her has there been if more when will
        would who so no she what its into than them only other some could these may then do any my
        our about out also your should must those such each how most both very between after over
        being through because before where while does did under him here why upon shall thou thy thee
        i me us it's don't isn't i'm""".split()
    ),
    "de": frozenset(
        """der die und den von zu das mit sich des auf für ist im dem nicht ein eine als auch es an
        werden aus er hat dass daß sie nach wird bei einer um am sind noch wie einem über einen so zum
        war haben nur oder aber vor zur bis mehr durch man sein wurde sei kann diese wenn ich""".split()
    ),
    "fr": frozenset(
        """le la les de des du et en un une est que qui dans pour pas sur au aux par plus ne se ce il
        elle sont avec ou son sa ses cette mais comme nous vous leur été être fait peut sans tout
        entre lors dont""".split()
    ),
    "es": frozenset(
        """el la los las de del y en un una es que por con para se no su sus al lo como más pero
        este esta son fue ha ser sin sobre entre también cuando muy ya desde todo hasta hay donde""".split()
    ),
    "it": frozenset(
        """il lo la gli le di del della dei delle e è in un una che per con non si sono da al alla
        nel nella come più ma anche questo questa essere ha tra fra dopo quando se""".split()
    ),
    "pt": frozenset(
        """o os a as de do da dos das e em um uma que para com não no na nos nas por se é ao mais
        como mas foi ser são está pelo pela também quando muito já entre sobre até isso""".split()
    ),
    "nl": frozenset(
        """de het een en van in is dat op te zijn voor met die niet aan er om ook als bij of uit
        wordt worden door naar maar nog dan zich kan deze dit over wel geen zijn hun""".split()
    ),
}
_WORD_LANGS: dict[str, tuple[str, ...]] = {}
for _lang, _words in FUNCTION_WORDS.items():
    for _w in _words:
        _WORD_LANGS[_w] = _WORD_LANGS.get(_w, ()) + (_lang,)

# --- code lines -------------------------------------------------------------------------------
# Each non-blank line is code, prose or neither. Comments, doctest lines and docstrings are
# neither. A line matching _STRONG_LINE_RE is code; otherwise it scores a point each for being
# indented, ending like code (",", ";", "{", "}", "):"), being a quoted string item of a list or
# dict, and holding code operators (_OPERATOR_RE; up to two), and two points make it code.
# Every regex here is either anchored at the line start or starts with punctuation, so the
# engine skips prose quickly (a regex starting with "\w" or "\b" is tried at every letter).
_COMMENT_STARTS = ("#", "//", "/*", "*", ">>>", "...", "<!--", "--", ";;")
_PREPROCESSOR_RE = re.compile(r"#\s*(?:include|define|ifn?def|endif|pragma|undef|elif|if)\b")
_STRONG_LINE_RE = re.compile(
    r"""(?:\ {4}|\t)\s*(?:return|yield|raise|assert|del|await|throw)\b        # indented statement
    | \s*(?:
        (?:async\s+)?def\s+[A-Za-z_]\w*\s*\(                      # Python function
      | class\s+[A-Za-z_]\w*\s*[(:{]                              # class
      | import\s+[\w.]+(?:\s+as\s+\w+)?(?:\s*,\s*[\w.]+(?:\s+as\s+\w+)?)*\s*;?\s*$
      | from\s+[\w.]+\s+import\s+[\w*(]
      | \#\s*(?:include|define|ifn?def|endif|pragma|undef)\b      # C preprocessor
      | (?:else|try|finally|except(?:\s+[\w.,\s()]+)?(?:\s+as\s+\w+)?)\s*:\s*$
      | (?:if|elif|while)\s.*:\s*$
      | for\s+[\w,\s()]+\s+in\s.*:\s*$
      | with\s.*\bas\s+\w+\s*:\s*$
      | (?:pass|break|continue)\s*;?\s*$
      | (?:function|func|fn)\s+[A-Za-z_$][\w$]*\s*\(                # JS / Go / Rust function
      | (?:public|private|protected|static|void|const|let|var|package|using|namespace|struct|enum|
           interface|impl|template|typedef|extern)\s[^.!?]*[;{=(]\s*$
      | @[A-Za-z_][\w.]*(?:\(.*\))?\s*$                            # decorator / annotation
      | [A-Za-z_][\w.]*(?:\[[^\]]*\])?\s*(?:[-+*/%&|^]|//|\*\*|<<|>>)?=(?!=)\s*\S   # assignment
      | [A-Za-z_][\w.]*\(.*\)\s*;?\s*$                              # call statement
      | [{}()\[\];,]+\s*$                                           # closing brackets
      | return\b\s*[^\s\w]*\s*;?\s*$|return\s+\S+\s*;\s*$
    )""",
    re.VERBOSE,
)
_OPERATOR_RE = re.compile(r"[=!<>]=|->|=>|::|&&|\|\||\+\+|\+=|-=|\(\)|\.\w+\(|\[[^\]\s]*\]|0[xX][0-9a-fA-F]+| #\s")
_STRING_ITEM_RE = re.compile(r"""[rbuf]?(?:'[^']*'|"[^"]*")\s*[,:)\]}]""")
_CODE_LINE_ENDS = (",", ";", "{", "}", "):")
# characters much more frequent in code than in prose (Python: 2-8% of all characters; English
# prose and Chinese: under 1%); below the floor a text skips the line-by-line analysis
_CODE_SYMBOLS = "=(){}[]<>_\\"  # not ";": verse and older prose are full of them
_CODE_SYMBOL_FLOOR = 0.006


@dataclass
class LangIdConfig:
    # languages kept; the others are dropped with reason lang_<x>. [] (or null) tags without dropping
    allowed: list[str] | None = field(default_factory=lambda: ["zh", "en", "code"])
    # Chinese when Han characters are at least this share of all letters (mixed zh/en text with a
    # few English terms stays Chinese; an English text quoting a few characters does not)
    zh_min_cjk_ratio: float = 0.3
    # ... and kana and Hangul (text.KANA_HANGUL_CHARS) are below this share of Han+kana+Hangul
    # (above it the text is Japanese or Korean with Chinese characters: other)
    max_kana_ratio: float = 0.1
    # English when at least this share of Latin-script words are English function words (running
    # English is ~40%, terse man pages and docstrings 14-25%, German/Swedish/Polish text under 10%) and English
    # beats every other listed language's share
    en_min_function_word_ratio: float = 0.12
    # ... and Latin letters are at least this share of all letters
    en_min_latin_ratio: float = 0.5
    # code when at least this share of the non-blank, non-comment lines look like code (stdlib
    # modules: 95% of them above 0.8; docstrings and man pages with examples: up to ~0.55)
    code_min_line_ratio: float = 0.6
    # ... and at least this many lines do (one stray assignment in prose is no program)
    code_min_lines: int = 3
    # only this many characters are examined (windows spread over the document); 0 = all of it
    sample_chars: int = 20_000

    def __post_init__(self) -> None:
        if self.allowed is None:
            self.allowed = []
        if not isinstance(self.allowed, list) or any(lang not in LANGUAGES for lang in self.allowed):
            raise ValueError(f"langid: allowed must be a list drawn from {list(LANGUAGES)}, got {self.allowed!r}")
        ratios = ("zh_min_cjk_ratio", "max_kana_ratio", "en_min_function_word_ratio", "en_min_latin_ratio", "code_min_line_ratio")
        for name in ratios:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"langid: {name} must be a number in [0, 1], got {value!r}")
        if self.code_min_lines < 1:
            raise ValueError(f"langid: code_min_lines must be >= 1, got {self.code_min_lines}")
        if self.sample_chars < 0:
            raise ValueError(f"langid: sample_chars must be >= 0 (0 = whole document), got {self.sample_chars}")


def _windows(text: str, budget: int) -> list[str]:
    """At most ``budget`` characters of ``text``: four windows spread over it, cut at line breaks."""
    if budget <= 0 or len(text) <= budget:
        return [text]
    windows, size = 4, budget // 4
    step = (len(text) - size) // (windows - 1)
    pieces = []
    for i in range(windows):
        piece = text[i * step : i * step + size]
        if i:  # start at a line boundary, not mid-token
            cut = piece.find("\n")
            piece = piece[cut + 1 :] if 0 <= cut < size // 2 else piece
        pieces.append(piece)
    return pieces


def code_line_counts(text: str, starts_at_file_start: bool = True) -> tuple[int, list[str]]:
    """(number of code lines, the prose lines) of a text; blank, comment, doctest (input and
    output) and docstring lines count for neither.

    A window cut from the middle of a file (``starts_at_file_start=False``) may start inside a
    docstring, which would swap what is docstring and what is code; so there, with triple quotes
    present, both readings are tried and the one that finds more code lines wins.
    """
    if starts_at_file_start or ('"""' not in text and "'''" not in text):
        return _code_line_counts(text, in_docstring=False)
    readings = [_code_line_counts(text, in_docstring=start) for start in (False, True)]
    return max(readings, key=lambda reading: reading[0])


def _code_line_counts(text: str, in_docstring: bool) -> tuple[int, list[str]]:
    code = 0
    prose: list[str] = []
    in_doctest = False  # after a ">>>" line, up to the next blank line, lines are its output
    for line in text.split("\n"):
        stripped = line.strip()
        if not stripped:
            in_doctest = False
            continue
        quotes = stripped.count('"""') + stripped.count("'''")
        if in_docstring or quotes:
            # a Python docstring is documentation inside code, like a comment
            in_docstring ^= quotes % 2 == 1
            continue
        if stripped.startswith(_COMMENT_STARTS) and not _PREPROCESSOR_RE.match(stripped):
            in_doctest = in_doctest or stripped.startswith(">>>")
            continue
        if in_doctest:
            continue
        if _STRONG_LINE_RE.match(line):
            code += 1
            continue
        points = 1 if line.startswith(("    ", "\t")) else 0
        if stripped.endswith(_CODE_LINE_ENDS):
            points += 1
        if points < 2 and stripped[0] in "'\"rbuf" and _STRING_ITEM_RE.match(stripped):
            points += 1
        if points == 1:
            points += 1 if _OPERATOR_RE.search(line) else 0
        elif points == 0:
            points += len(_OPERATOR_RE.findall(line))
        if points >= 2:
            code += 1
        else:
            prose.append(line)
    return code, prose


def function_word_ratios(latin_words: list[str]) -> dict[str, float]:
    """Per language, the share of these (lowercased, Latin-script) words that are its function words."""
    hits = dict.fromkeys(FUNCTION_WORDS, 0)
    # filtering and counting run in C; Python then loops over the few distinct function words
    for word, n in collections.Counter(filter(_WORD_LANGS.__contains__, latin_words)).items():
        for lang in _WORD_LANGS[word]:
            hits[lang] += n
    total = len(latin_words)
    return {lang: (count / total if total else 0.0) for lang, count in hits.items()}


def identify_language(text: str, config: LangIdConfig | None = None) -> tuple[str, float]:
    """``(lang, score)`` for a text: lang in zh/en/code/other, score a confidence in [0, 1]."""
    cfg = config or LangIdConfig()
    windows = _windows(text, cfg.sample_chars)
    sample = "\n".join(windows)

    code_score = 0.0
    prose_text = sample  # where function words are counted
    if sum(map(sample.count, _CODE_SYMBOLS)) >= _CODE_SYMBOL_FLOOR * len(sample):
        readings = [code_line_counts(w, i == 0) for i, w in enumerate(windows)]  # a docstring may straddle a cut
        code_lines = sum(code for code, _ in readings)
        prose_lines = [line for _, prose in readings for line in prose]
        if code_lines + len(prose_lines):
            code_score = code_lines / (code_lines + len(prose_lines))
        if code_score >= cfg.code_min_line_ratio and code_lines >= cfg.code_min_lines:
            return "code", round(code_score, 4)
        # documentation with examples: judge its language by its sentences, not by its code
        prose_text = "\n".join(prose_lines)

    latin_words = _LATIN_SCRIPT_WORD_RE.findall(sample.lower())
    latin_letters = sum(map(len, latin_words))
    zh_score = 0.0
    if sample.isascii():
        letters = latin_letters
    else:
        letters = sum(map(len, _LETTER_RUN_RE.findall(sample)))
        han = han_count(sample)
        if han:
            kana = kana_hangul_count(sample)
            if kana < cfg.max_kana_ratio * (han + kana):  # else Japanese or Korean
                zh_score = han / max(letters, 1)
                if zh_score >= cfg.zh_min_cjk_ratio:
                    return "zh", round(zh_score, 4)
    if not letters:
        return "other", 1.0

    prose_words = latin_words if prose_text is sample else _LATIN_SCRIPT_WORD_RE.findall(prose_text.lower())
    ratios = function_word_ratios(prose_words if len(prose_words) >= 20 else latin_words)  # too few: all words
    latin_share = min(latin_letters / letters, 1.0)
    en = ratios["en"]
    # full English confidence at twice the threshold (running English sits at 0.3-0.5)
    en_strength = min(en / (2 * cfg.en_min_function_word_ratio), 1.0) if cfg.en_min_function_word_ratio else 1.0
    en_score = latin_share * en_strength
    best_other = max(r for lang, r in ratios.items() if lang != "en")
    if latin_share >= cfg.en_min_latin_ratio and en >= cfg.en_min_function_word_ratio and en >= best_other:
        return "en", round(en_score, 4)
    return "other", round(1.0 - max(code_score, zh_score, en_score), 4)


@register_step("langid")
class LangId(Step):
    Config = LangIdConfig

    def setup(self, ctx: StepContext) -> None:
        self._allowed = frozenset(self.config.allowed or ())

    def process(self, doc: Document) -> Document | Drop:
        lang, score = identify_language(doc.text, self.config)
        self.count(lang)
        doc.metadata["lang"] = lang
        doc.metadata["lang_score"] = score
        if self._allowed and lang not in self._allowed:
            return drop(f"lang_{lang}")
        return doc
