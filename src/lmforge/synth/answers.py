"""Numbers in math answers: exact parsing, canonical writing, extraction from a reply, comparison.

* ``parse_number("1,234.50")`` -> ``Fraction(2469, 2)``; also ``"3/4"``, ``"-2"``, ``"15%"`` (as
  3/20), full-width digits (``"１２"``) and LaTeX ``\\frac{3}{4}``.
* ``format_number(value, style)``: the canonical answer string. Integers are written as integers
  (``"42"``); other values as a reduced fraction (``"7/12"``) in ``style="fraction"``, and as an
  exact decimal (``"2.5"``) in ``style="decimal"`` where the value has one (its denominator
  divides a power of ten), else as a reduced fraction.
* ``extract_answer(reply)``: the answer a reply gives, as a number string, trying in order the
  fixed final line (``Answer: 42`` / ``答案：42``, the first one), ``#### 42`` (GSM8K),
  ``\\boxed{42}``, "the answer is 42" / "答案是42", then the last number in the text.
* ``answers_match(pred, gold)``: numeric equality (``"0.75"`` == ``"3/4"`` == ``"0.750"``); a
  decimal with at least two places also matches a fraction it rounds (``"0.33"`` ~ ``"1/3"``).

::

    extract_answer("第1步：12 × 3 = 36\\n答案：36")     # "36"
    answers_match("1,234", "1234")                        # True
"""

from __future__ import annotations

import re
import unicodedata
from fractions import Fraction

# A number as written in text: thousands separators, decimals, a fraction bar, a percent sign.
NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?%?"
_NUMBER_RE = re.compile(NUMBER)
_FINAL_LINE_RE = re.compile(
    r"^[ \t>*#_]*(?:final answer|answer|最终答案|答案)[ \t*_]*[:：][ \t*_$]*(" + NUMBER + ")", re.IGNORECASE | re.MULTILINE
)
_GSM8K_RE = re.compile(r"####\s*\$?\s*(" + NUMBER + ")")
_BOXED_RE = re.compile(r"\\boxed\{\s*\$?\s*(" + NUMBER + r")\s*\}")
_ANSWER_IS_RE = re.compile(r"(?:answer is|答案是|答案为|结果是)[\s:：$]*(" + NUMBER + ")", re.IGNORECASE)
_FRAC_RE = re.compile(r"\\[dt]?frac\{\s*(-?\d+)\s*\}\{\s*(\d+)\s*\}")


def normalize_text(text: str) -> str:
    """Full-width forms to ASCII (NFKC: ``１２／３`` -> ``12/3``, ``：`` -> ``:``), the minus
    sign U+2212 to ``-``, LaTeX ``\\frac{a}{b}`` to ``a/b``."""
    text = unicodedata.normalize("NFKC", text).replace("\u2212", "-")
    return _FRAC_RE.sub(r"\1/\2", text)


def _clean(number: str) -> str:
    return re.sub(r"\s+", "", number).replace(",", "")


def parse_number(text: str) -> Fraction:
    """A number string (see the module docstring) as an exact ``Fraction``; ``ValueError`` if none."""
    s = _clean(normalize_text(str(text)).strip())
    percent = s.endswith("%")
    s = s.rstrip("%")
    if not re.fullmatch(r"-?\d+(?:\.\d+)?(?:/\d+(?:\.\d+)?)?", s):
        raise ValueError(f"not a number: {text!r}")
    if "/" in s:
        num, den = s.split("/")
        value = Fraction(num) / Fraction(den)  # ZeroDivisionError for x/0, which is no number either
    else:
        value = Fraction(s)
    return value / 100 if percent else value


def _decimal_places(value: Fraction) -> int | None:
    """How many decimal places write ``value`` exactly, or None when its decimal never ends (1/3)."""
    den, twos, fives = value.denominator, 0, 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    return max(twos, fives) if den == 1 else None


def format_number(value: Fraction | int, style: str = "decimal") -> str:
    """The canonical string of an exact value (see the module docstring for the rule)."""
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    if style == "decimal":
        places = _decimal_places(value)
        if places is not None:  # a terminating decimal, written with exactly its places
            scaled = abs(value.numerator * 10**places // value.denominator)
            digits = str(scaled).rjust(places + 1, "0")
            text = f"{digits[:-places]}.{digits[-places:]}".rstrip("0").rstrip(".")
            return f"-{text}" if value < 0 else text
    elif style != "fraction":
        raise ValueError(f"style must be 'decimal' or 'fraction', got {style!r}")
    return f"{value.numerator}/{value.denominator}"


def answer_span(text: str, strict: bool = False) -> tuple[int, int] | None:
    """Where in (normalized) ``text`` the stated answer is, by ``extract_answer``'s priorities."""
    for pattern, take_last in ((_FINAL_LINE_RE, False), (_GSM8K_RE, False), (_BOXED_RE, True), (_ANSWER_IS_RE, True)):
        hits = list(pattern.finditer(text))
        if hits:
            return (hits[-1] if take_last else hits[0]).span(1)
    if strict:
        return None
    numbers = list(_NUMBER_RE.finditer(text))
    return numbers[-1].span() if numbers else None


def extract_answer(text: str | None, strict: bool = False) -> str | None:
    """The final answer a reply states, as a number string (commas removed), or None.
    ``strict``: only an answer stated as such (final line, ``####``, boxed, "the answer is"),
    never the last number of a reply that states none."""
    if not text:
        return None
    text = normalize_text(text)
    span = answer_span(text, strict)
    return None if span is None else _clean(text[span[0] : span[1]]).rstrip("%")


def answers_match(pred: str | None, gold: str | None) -> bool:
    """Whether a predicted answer equals the gold one as a number (strings compared when either
    is not a number)."""
    if pred is None or gold is None:
        return False
    try:
        p, g = parse_number(pred), parse_number(gold)
    except (ValueError, ZeroDivisionError):
        return normalize_text(str(pred)).strip().lower() == normalize_text(str(gold)).strip().lower()
    if p == g:
        return True
    # "0.33" for 1/3: a decimal with >= 2 places matches the gold value rounded to as many places —
    # only when the gold value has no exact decimal (2.125 must be written 2.125, not 2.12).
    m = re.fullmatch(r"-?\d+\.(\d{2,})", _clean(normalize_text(str(pred)).strip()))
    if m and _decimal_places(g) is None:
        places = len(m.group(1))
        return round(g, places) == p
    return False
