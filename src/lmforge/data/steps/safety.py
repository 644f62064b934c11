"""Safety steps: ``unsafe_filter`` (toxic / explicit content by word lists) and ``pii`` (redaction).

``unsafe_filter`` matches the word lists shipped in ``lmforge/data/steps/wordlists`` (English and
Chinese profanity, sexual, slur and violent-extremist terms; see the files' headers for the format
and what was left out on purpose), plus your own files and words. Terms with a CJK character are
matched as substrings (Chinese has no word boundaries); all others case-insensitively on word
boundaries, with a trailing ``*`` matching any continuation ("fuck*"). Each list becomes one
trie-shaped regex, so matching stays fast however long the lists are. A document is unsafe when it
has at least ``min_matches`` matches *and* at least ``max_per_1000_words`` per 1000 words
(``words()``: Latin words plus CJK characters), so a novel with a few curses survives and spam does
not. ``action: drop`` drops unsafe documents (reason ``unsafe``); ``action: flag`` keeps every
document and writes ``unsafe_terms`` (matches), ``unsafe_score`` (per 1000 words) and ``unsafe``
(bool) into its metadata. Counters: ``matches_<list>`` per word list.

``pii`` replaces e-mail addresses, phone numbers (Chinese mobiles with or without +86, Chinese
landlines with area code, international "+CC ..." numbers, US numbers), Chinese resident ID
numbers (18 characters whose ISO 7064 MOD 11-2 check digit and birth date are valid; random
18-digit numbers stay) and IP addresses (IPv4 with four valid octets that is not part of a longer
dotted number nor preceded by "version"/"v"/"Section", nor a netmask; IPv6 that ``ipaddress``
accepts with at least three groups; loopback, documentation and multicast ranges identify no one
and stay) by placeholders. Counters: ``email``, ``phone``, ``id_number``, ``ip``.

Usage::

    steps:
      - type: unsafe_filter
        extra_words: [spamword]
        extra_word_files: [lists/my_terms.txt]   # relative to the pipeline file
        action: flag
      - type: pii
        ip: false                                # keep IP addresses
        replacements: {email: "[email]"}
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.data.document import DataError, Document
from lmforge.data.pipeline.base import Drop, Step, StepContext, drop, register_step
from lmforge.data.steps.text import ASCII_DIGIT_RE, CJK_RE, words

WORDLIST_DIR = Path(__file__).resolve().parent / "wordlists"
ACTIONS = ("drop", "flag")


# --- word lists -----------------------------------------------------------------------------------
def read_wordlist(path: Path) -> list[str]:
    """Terms of a word-list file: one per line, ``#`` comments, lowercased; errors name file:line."""
    terms = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read word list: {e}") from None
    for number, line in enumerate(lines, 1):
        term = line.split("#", 1)[0].strip().lower()
        if not term:
            continue
        if "*" in term[:-1] or term == "*":
            raise DataError(f"{path}:{number}: '*' may only end a term, got {term!r}")
        terms.append(" ".join(term.split()))
    return terms


def _trie_pattern(terms: list[str]) -> str:
    """One regex for many terms, shaped as a trie: "(?:fu(?:ck[a-z]*|k)|shit(?:s|ty)?)".

    The regex engine tries alternatives one by one, so a flat alternation of 300 words costs 300
    attempts at every position; the trie costs one attempt per distinct next character. Longer
    terms come first (greedy optional tails), so "他妈的" wins over a shorter listed prefix.
    """
    trie: dict = {}
    for term in terms:
        node = trie
        for ch in term:
            node = node.setdefault(ch, {})
        node[""] = {}  # a term ends here

    def atom(ch: str) -> str:
        if ch == " ":
            return r"\s+"
        if ch == "*":
            return "[a-z0-9]*"
        return re.escape(ch)

    def build(node: dict) -> str:
        branches = [atom(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return build(trie)


@dataclass
class _WordList:
    name: str
    boundary_re: re.Pattern | None  # Latin terms, matched between word boundaries
    substring_re: re.Pattern | None  # terms with CJK characters, matched anywhere

    def count(self, lowered: str, has_cjk: bool) -> int:
        n = 0
        if self.boundary_re is not None:
            n += sum(1 for _ in self.boundary_re.finditer(lowered))
        if self.substring_re is not None and has_cjk:
            n += sum(1 for _ in self.substring_re.finditer(lowered))
        return n


def compile_wordlist(name: str, terms: list[str]) -> _WordList:
    latin = sorted({t for t in terms if not CJK_RE.search(t)})
    cjk = sorted({t for t in terms if CJK_RE.search(t)})
    # ASCII letters and digits bound a Latin term: "fuck你" still matches, "Scunthorpe" does not
    boundary = re.compile(f"(?<![a-z0-9])(?:{_trie_pattern(latin)})(?![a-z0-9])") if latin else None
    substring = re.compile(_trie_pattern(cjk)) if cjk else None
    return _WordList(name, boundary, substring)


@dataclass
class UnsafeFilterConfig:
    # shipped word lists by name (lmforge/data/steps/wordlists/<name>.txt); [] uses none of them
    wordlists: list[str] = field(default_factory=lambda: ["unsafe_en", "unsafe_zh"])
    # more word-list files in the same format (paths relative to the working directory)
    extra_word_files: list[str] = field(default_factory=list)
    # more terms given inline (same rules as a list file's lines)
    extra_words: list[str] = field(default_factory=list)
    # a document is unsafe only with at least this many matches (one stray word proves nothing) ...
    min_matches: int = 3
    # ... and at least this many matches per 1000 words (spam and porn: 20+; fiction with
    # swearing: 1-2; the shared zh novel and Shakespeare: under 1)
    max_per_1000_words: float = 5.0
    # drop: unsafe documents are dropped (reason "unsafe"); flag: keep all, write unsafe_* metadata
    action: str = "drop"

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unsafe_filter: action must be one of {list(ACTIONS)}, got {self.action!r}")
        if self.min_matches < 1:
            raise ValueError(f"unsafe_filter: min_matches must be >= 1, got {self.min_matches}")
        if self.max_per_1000_words < 0:
            raise ValueError(f"unsafe_filter: max_per_1000_words must be >= 0, got {self.max_per_1000_words}")
        for name in ("wordlists", "extra_word_files", "extra_words"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"unsafe_filter: {name} must be a list of strings, got {value!r}")
        for name in self.wordlists:
            if not (WORDLIST_DIR / f"{name}.txt").is_file():
                shipped = sorted(p.stem for p in WORDLIST_DIR.glob("*.txt"))
                raise ValueError(f"unsafe_filter: wordlists: no shipped list {name!r}; shipped: {shipped}")
        for word in self.extra_words:
            if "*" in word.strip()[:-1] or not word.strip():
                raise ValueError(f"unsafe_filter: extra_words: {word!r} is empty or has '*' before its end")


@register_step("unsafe_filter")
class UnsafeFilter(Step):
    resource_fields = ("extra_word_files",)
    Config = UnsafeFilterConfig

    def setup(self, ctx: StepContext) -> None:
        cfg: UnsafeFilterConfig = self.config
        sources = [(name, read_wordlist(WORDLIST_DIR / f"{name}.txt")) for name in cfg.wordlists]
        sources += [(Path(p).stem, read_wordlist(ctx.resolve(p))) for p in cfg.extra_word_files]
        if cfg.extra_words:
            sources.append(("extra_words", [" ".join(w.lower().split()) for w in cfg.extra_words]))
        seen: set[str] = set()
        self._lists: list[_WordList] = []
        for name, terms in sources:
            fresh = [t for t in terms if t not in seen]  # a term listed twice counts once
            seen.update(fresh)
            if fresh:
                self._lists.append(compile_wordlist(name, fresh))

    def process(self, doc: Document) -> Document | Drop:
        cfg: UnsafeFilterConfig = self.config
        lowered = doc.text.lower()
        has_cjk = not lowered.isascii() and CJK_RE.search(lowered) is not None
        matches = 0
        for wordlist in self._lists:
            n = wordlist.count(lowered, has_cjk)
            if n:
                self.count(f"matches_{wordlist.name}", n)
                matches += n
        score = 0.0
        if matches >= cfg.min_matches or (matches and cfg.action == "flag"):  # else the count decides alone
            score = matches * 1000 / max(len(words(lowered, lower=False)), 1)
        unsafe = matches >= cfg.min_matches and score >= cfg.max_per_1000_words
        if cfg.action == "flag":
            doc.metadata["unsafe_terms"] = matches
            doc.metadata["unsafe_score"] = round(score, 3)
            doc.metadata["unsafe"] = unsafe
            return doc
        return drop("unsafe") if unsafe else doc


# --- PII ------------------------------------------------------------------------------------------
PII_KINDS = ("email", "phone", "id_number", "ip")
DEFAULT_REPLACEMENTS = {"email": "<EMAIL>", "phone": "<PHONE>", "id_number": "<ID_NUMBER>", "ip": "<IP>"}

# Every pattern starts with a literal or a character class, which lets the regex engine skip
# straight to candidate characters (digits are ~1% of prose); what may precede a match is checked
# afterwards (``_NOT_AFTER``), because a leading lookbehind would be tried at every position.
_EMAIL_RE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9-])"
)
# 6-digit region (first digit 1-8), birth date YYYYMMDD, 3-digit sequence, check digit (0-9 or X)
_ID_NUMBER_RE = re.compile(
    r"[1-8]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[0-9Xx](?![0-9A-Za-z])"
)
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
_PHONE_RES = (
    # Chinese mobile with country code: +86 138 1234 5678, 0086-13812345678
    re.compile(r"\+86[ -]?1[3-9]\d(?:[ -]?\d{4}){2}(?!\d)"),
    re.compile(r"0086[ -]?1[3-9]\d(?:[ -]?\d{4}){2}(?!\d)"),
    # Chinese mobile: 1[3-9]x xxxx xxxx, optionally split by spaces or dashes
    re.compile(r"1[3-9]\d(?:[ -]?\d{4}){2}(?!\d)"),
    # Chinese landline: area code 0xx/0xxx followed by a dash or in brackets, 7-8 digits, extension
    re.compile(r"0\d{2,3}- ?\d{7,8}(?:-\d{1,5})?(?!\d)"),
    re.compile(r"[(（]0\d{2,3}[)）] ?\d{7,8}(?:-\d{1,5})?(?!\d)"),
    # international: "+CC" then groups of digits (8-15 digits in all, checked in _plausible_phone)
    re.compile(r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?)(?:[ .-]?\d{2,4}){2,5}(?!\d)"),
    # US / NANP: 1-800-555-0199, (555) 123-4567, 555-123-4567, 555.123.4567 (one separator style)
    re.compile(r"1[-.][2-9]\d{2}([-.])\d{3}\1\d{4}(?![\w-])"),
    re.compile(r"\([2-9]\d{2}\) ?\d{3}[-.]\d{4}(?![\w-])"),
    re.compile(r"[2-9]\d{2}([-.])\d{3}\1\d{4}(?![\w-])"),
)
_IPV4_CANDIDATE_RE = re.compile(r"\d\d{0,2}(?:\.\d{1,3}){3}")  # "\d" first: a class prefix, unlike "\d{1,3}"
# "version 3.10.4.1", "v1.2.3.4", "Python 3.11.0.1", "Section 4.1.2.4": dotted numbers that are no address
_NOT_AN_ADDRESS_CONTEXT_RE = re.compile(
    r"(?i)(?:\bv|\bver\.?|version|release|build|rev\.?|python|java|chrome|firefox"
    r"|section|sec\.|chapter|ch\.|§|figure|fig\.|table|appendix|clause|article|rule|step|item|part)\s*$"
)
# Addresses that identify no one: "this host", loopback, the documentation ranges (RFC 5737 and
# RFC 3849: what manuals and docstrings use for examples), multicast and reserved space.
_NON_PERSONAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("0.0.0.0/8", "127.0.0.0/8", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/3",
              "2001:db8::/32", "ff00::/8")
)
# hex digits and colons with at least two colons (an IPv4 tail allowed), validated by ipaddress;
# the candidate pattern is slow (it starts with a lookbehind), so only texts with a hint run it
_IPV6_HINT_RE = re.compile(r":[0-9A-Fa-f]{0,4}:")
_IPV6_CANDIDATE_RE = re.compile(
    r"(?<![\w:.])(?=[0-9A-Fa-f]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:]{2,39}(?:(?<=:)(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"
)
_CIDR_PREFIX_RE = re.compile(r"/(\d{1,2})(?!\d)")
# characters that may not come right before a match of each kind (it would be part of something longer)
_NOT_AFTER = {
    "email": frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-"),
    "id_number": frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"),
    "phone": frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_+.-"),
    "ip": frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_."),
}


def _preceded_by(m: re.Match, forbidden: frozenset[str]) -> bool:
    return m.start() > 0 and m.string[m.start() - 1] in forbidden


def valid_id_number(number: str) -> bool:
    """Whether an 18-character Chinese resident ID has a valid check digit and a real birth date."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS))
    if _ID_CHECK[total % 11] != number[17].upper():
        return False
    try:
        born = datetime.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    return datetime.date(1880, 1, 1) <= born <= datetime.date.today()


@dataclass
class PiiConfig:
    email: bool = True  # redact e-mail addresses
    phone: bool = True  # redact phone numbers (CN mobile/landline, international, US)
    id_number: bool = True  # redact Chinese resident ID numbers (checksum-valid only)
    ip: bool = True  # redact IPv4 and IPv6 addresses
    # placeholder per kind; kinds not given keep their default (<EMAIL>, <PHONE>, <ID_NUMBER>, <IP>)
    replacements: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_REPLACEMENTS))

    def __post_init__(self) -> None:
        if not isinstance(self.replacements, dict):
            raise ValueError(f"pii: replacements must be a mapping of kind to text, got {self.replacements!r}")
        unknown = set(self.replacements) - set(PII_KINDS)
        if unknown:
            raise ValueError(f"pii: replacements has unknown kinds {sorted(unknown)}; kinds: {list(PII_KINDS)}")
        if not all(isinstance(v, str) for v in self.replacements.values()):
            raise ValueError(f"pii: replacements must map kinds to strings, got {self.replacements!r}")
        self.replacements = {**DEFAULT_REPLACEMENTS, **self.replacements}


@register_step("pii")
class Pii(Step):
    Config = PiiConfig

    def process(self, doc: Document) -> Document | Drop:
        text = self.redact(doc.text)
        # a new Document when redacted: the executor counts changes by comparing texts in and out
        return doc if text is doc.text else Document(doc.id, text, doc.metadata)

    def redact(self, text: str) -> str:
        """``text`` with the enabled kinds of PII replaced (the same object when nothing was found)."""
        cfg: PiiConfig = self.config
        if cfg.email and "@" in text:
            text = self._redact_emails(text)
        if cfg.ip and _IPV6_HINT_RE.search(text):
            text = self._sub("ip", _IPV6_CANDIDATE_RE, text, _valid_ipv6)
        if not ASCII_DIGIT_RE.search(text):
            return text  # the other kinds are numbers (a Chinese novel may have no ASCII digit at all)
        if cfg.id_number:
            text = self._sub("id_number", _ID_NUMBER_RE, text, _valid_id_match)
        if cfg.phone:
            for pattern in _PHONE_RES:
                text = self._sub("phone", pattern, text, _plausible_phone)
        if cfg.ip and "." in text:
            text = self._sub("ip", _IPV4_CANDIDATE_RE, text, _valid_ipv4)
        return text

    def _redact_emails(self, text: str) -> str:
        """Emails, searched only in the lines that hold an "@" (the pattern starts with a letter class,
        which gives the regex engine nothing to skip ahead to)."""
        pieces: list[str] = []
        done = 0  # text[:done] is already in pieces
        at = text.find("@")
        while at >= 0:
            start = text.rfind("\n", 0, at) + 1
            end = text.find("\n", at)
            end = len(text) if end < 0 else end
            pieces.append(text[done:start])
            pieces.append(self._sub("email", _EMAIL_RE, text[start:end], _email_accept))
            done = end
            at = text.find("@", end)
        pieces.append(text[done:])
        redacted = "".join(pieces)
        return text if redacted == text else redacted

    def _sub(self, kind: str, pattern: re.Pattern, text: str, accept) -> str:
        replacement = self.config.replacements[kind]
        found = 0

        def replace(m: re.Match) -> str:
            nonlocal found
            if not accept(m):
                return m.group()
            found += 1
            return replacement

        new = pattern.sub(replace, text)
        if found:
            self.count(kind, found)
            return new
        return text


def _email_accept(m: re.Match) -> bool:
    return not _preceded_by(m, _NOT_AFTER["email"])


def _valid_id_match(m: re.Match) -> bool:
    return not _preceded_by(m, _NOT_AFTER["id_number"]) and valid_id_number(m.group())


def _plausible_phone(m: re.Match) -> bool:
    digits = sum(c.isdigit() for c in m.group())
    return 7 <= digits <= 15 and not _preceded_by(m, _NOT_AFTER["phone"])


def _valid_ipv4(m: re.Match) -> bool:
    """Four octets 0-255 without leading zeros, not part of a longer dotted number or name, not a
    version or section number, not a netmask or network (10.0.0.0/16), not in a range that
    identifies no one."""
    text, end = m.string, m.end()
    if _preceded_by(m, _NOT_AFTER["ip"]) or text[end : end + 1].isdigit():
        return False
    if text[end : end + 1] == "." and text[end + 1 : end + 2].isalnum():
        return False  # 1.2.3.4.5, libfoo1.2.3.4.so, 4.3.2.1.in-addr.arpa
    if any(len(octet) > 1 and octet[0] == "0" or int(octet) > 255 for octet in m.group().split(".")):
        return False
    if _NOT_AN_ADDRESS_CONTEXT_RE.search(text, max(0, m.start() - 16), m.start()):
        return False
    value = int(ipaddress.IPv4Address(m.group()))
    host_bits = ~value & 0xFFFFFFFF
    if value and host_bits & (host_bits + 1) == 0:
        return False  # a netmask (255.255.255.0): ones then zeros
    prefix = _CIDR_PREFIX_RE.match(text, end)
    if prefix and int(prefix.group(1)) <= 30 and value & ((1 << (32 - int(prefix.group(1)))) - 1) == 0:
        return False  # a network, not a host: 10.0.0.0/16
    return _personal(ipaddress.IPv4Address(value))


def _personal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not any(address in network for network in _NON_PERSONAL_NETWORKS if network.version == address.version)


def _valid_ipv6(m: re.Match) -> bool:
    candidate = m.group()
    try:
        address = ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    # "::1", "fe80::1", C++ "a::b": too short to identify anyone (or not an address at all)
    groups = [g for g in candidate.split(":") if g]
    return len(groups) >= 3 and not address.is_loopback and not address.is_unspecified and _personal(address)
