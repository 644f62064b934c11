"""The demo corpus: text every machine with Python has, so the demo needs no download.

Three sources, all optional, each filling at most its share of ``max_bytes``:

- ``stdlib``: the standard library's ``.py`` sources (code with comments and docstrings);
- ``docstrings``: the same modules' docstrings pulled out with ``ast`` as prose documents;
- ``man``: system manual pages under ``/usr/share/man`` in every language present (English,
  Chinese, German, ...), converted from roff to plain text here (no groff needed).

Files are shuffled with ``seed`` before the cap is applied, so a small cap still samples every
part of the library. Instead of the built-in sources a recipe may name its own ``inputs``
(files or directories in any reader format); then this stage only fingerprints them.

Usage::

    stats = build_corpus(CorpusConfig(max_bytes=2_000_000), "runs/demo/corpus.jsonl")
    print(stats["documents"], stats["bytes"], stats["by_source"])
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import random
import re
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from lmforge.io import write_json_atomic


@dataclass
class CorpusConfig:
    inputs: list[str] = field(default_factory=list)  # your own data; when set, built-in sources are off
    # share of max_bytes each built-in source may fill (man pages alone would swamp the code)
    sources: dict[str, float] = field(default_factory=lambda: {"stdlib": 0.5, "docstrings": 0.15, "man": 0.35})
    max_bytes: int = 20_000_000  # cap on the built-in corpus's UTF-8 size
    max_doc_chars: int = 60_000  # longer files are cut into pieces of about this size
    min_doc_chars: int = 200
    man_dirs: list[str] = field(default_factory=lambda: ["/usr/share/man"])
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.sources) - {"stdlib", "docstrings", "man"}
        if unknown:
            raise ValueError(f"unknown corpus sources {sorted(unknown)}; choose from stdlib, docstrings, man")
        if any(share < 0 for share in self.sources.values()) or sum(self.sources.values()) > 1.0 + 1e-9:
            raise ValueError(f"corpus source shares must be >= 0 and sum to at most 1; got {self.sources}")


def stdlib_files() -> list[Path]:
    """The standard library's own .py files (no site-packages, no test suites, no generated
    codec tables: ~100 files of `0x00e9: 0x00c9,  # LATIN ...` lines that a small model would
    otherwise learn to recite)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__", "lib2to3"}
    return sorted(
        p
        for p in root.rglob("*.py")
        if not skip & set(p.relative_to(root).parts) and not (p.parent.name == "encodings" and _is_generated_codec(p))
    )


def _is_generated_codec(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        return "gencodec.py" in f.read(2000)  # the generator names itself in the header


def man_files(man_dirs: list[str]) -> list[Path]:
    files: list[Path] = []
    for directory in man_dirs:
        root = Path(directory)
        if root.is_dir():
            files.extend(p for p in root.rglob("*") if p.is_file() and re.search(r"\.\d\w*(\.gz)?$", p.name))
    return sorted(files)


# --- roff -> text ---------------------------------------------------------------------------
_ROFF_ESCAPES = {
    r"\-": "-", r"\(em": "—", r"\(en": "–", r"\(bu": "•", r"\(co": "©", r"\(aq": "'", r"\(dq": '"',
    r"\(lq": "“", r"\(rq": "”", r"\(oq": "‘", r"\(cq": "’", r"\(ga": "`", r"\(ha": "^", r"\(ti": "~",
    r"\(rs": "\\", r"\(mu": "×", r"\(de": "°", r"\(>=": "≥", r"\(<=": "≤", r"\e": "\\", r"\ ": " ",
    r"\~": " ", r"\0": " ", r"\&": "", r"\/": "", r"\,": "", r"\|": "", r"\^": "", r"\:": "", r"\c": "",
}
_ESCAPE_RE = re.compile("|".join(re.escape(k) for k in sorted(_ROFF_ESCAPES, key=len, reverse=True)))
_FONT_RE = re.compile(r"\\f(\[[^\]]*\]|\(..|.)")
_OTHER_ESCAPE_RE = re.compile(r"\\(\*\(..|\*\[[^\]]*\]|\*.|s[+-]?\d|[nN]\[[^\]]*\]|\(..|\[[^\]]*\])")
_HEADING_MACROS = {".SH", ".SS", ".Sh", ".Ss"}
_FONT_MACROS = {".B", ".I", ".BI", ".BR", ".IB", ".IR", ".RB", ".RI", ".SM", ".SB", ".Nm", ".Ar", ".Fl", ".Cm"}


def roff_to_text(source: str) -> str:
    """Plain text of a man page: headings on their own lines, fonts and most escapes dropped."""
    out: list[str] = []
    for line in source.splitlines():
        if line.startswith(('.\\"', "'\\\"", '.\\\\"')) or line.strip() in (".", "'"):
            continue
        if line.startswith((".", "'")):
            macro, _, rest = line.partition(" ")
            if macro in _HEADING_MACROS:
                out.extend(["", rest.strip('"').strip(), ""])
            elif macro in _FONT_MACROS:
                out.append(" ".join(part.strip('"') for part in re.findall(r'"[^"]*"|\S+', rest)))
            elif macro in (".PP", ".LP", ".P", ".TP", ".IP", ".Pp", ".sp", ".br"):
                out.append("")
                if macro == ".IP" and rest:
                    out.append(rest.split()[0].strip('"'))
            elif macro == ".TH":
                out.append(rest.split()[0].strip('"') if rest else "")
            continue  # other requests (.if, .de, .nr, .ft, ...) carry no prose
        out.append(line)
    text = "\n".join(out)
    text = _FONT_RE.sub("", text)
    text = _ESCAPE_RE.sub(lambda m: _ROFF_ESCAPES[m.group(0)], text)
    text = _OTHER_ESCAPE_RE.sub("", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _read_man(path: Path) -> str:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    if text.lstrip().startswith(".so "):
        return ""  # an alias page pointing at another page
    return roff_to_text(text)


def _docstrings(source: str) -> str:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    parts = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 80:
                title = getattr(node, "name", None)
                parts.append(f"{title}\n\n{doc}" if title else doc)
    return "\n\n".join(parts)


def _pieces(text: str, max_chars: int) -> Iterator[str]:
    """Cut long text at blank lines into pieces of at most about ``max_chars``."""
    if len(text) <= max_chars:
        yield text
        return
    piece: list[str] = []
    size = 0
    for block in text.split("\n\n"):
        if size + len(block) > max_chars and piece:
            yield "\n\n".join(piece)
            piece, size = [], 0
        piece.append(block)
        size += len(block) + 2
    if piece:
        yield "\n\n".join(piece)


def iter_builtin_documents(cfg: CorpusConfig, wanted=lambda source: True) -> Iterator[dict]:
    """Documents from the built-in sources; ``wanted(source)`` False skips reading that source."""
    jobs: list[tuple[str, Path]] = []
    if "stdlib" in cfg.sources or "docstrings" in cfg.sources:
        jobs += [("python", p) for p in stdlib_files()]
    if "man" in cfg.sources:
        jobs += [("man", p) for p in man_files(cfg.man_dirs)]
    random.Random(cfg.seed).shuffle(jobs)
    for kind, path in jobs:
        names = ["man"] if kind == "man" else [n for n in ("stdlib", "docstrings") if n in cfg.sources]
        if not any(wanted(n) for n in names):
            continue
        try:
            if kind == "man":
                texts = [("man", _read_man(path))]
            else:
                source = path.read_text(encoding="utf-8", errors="replace")
                texts = []
                if wanted("stdlib") and "stdlib" in cfg.sources:
                    texts.append(("stdlib", source))
                if wanted("docstrings") and "docstrings" in cfg.sources:
                    texts.append(("docstrings", _docstrings(source)))
        except OSError:
            continue  # unreadable file: skip, the corpus is best-effort by nature
        for source_name, text in texts:
            for piece in _pieces(text, cfg.max_doc_chars):
                if len(piece) >= cfg.min_doc_chars:
                    yield {"text": piece, "source": source_name, "path": str(path)}


def build_corpus(cfg: CorpusConfig, out_path: str | Path) -> dict:
    """Write the built-in corpus as jsonl (atomically) and return its statistics."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    budget = {name: share * cfg.max_bytes for name, share in cfg.sources.items()}
    stats = {"documents": 0, "bytes": 0, "by_source": {name: {"documents": 0, "bytes": 0} for name in budget}}
    with open(tmp, "w", encoding="utf-8") as f:
        def full(name: str) -> bool:
            return name not in budget or stats["by_source"][name]["bytes"] >= budget[name] - cfg.min_doc_chars

        for doc in iter_builtin_documents(cfg, wanted=lambda name: not full(name)):
            size = len(doc["text"].encode("utf-8"))
            by = stats["by_source"][doc["source"]]
            if by["bytes"] + size > budget[doc["source"]]:
                continue  # keep looking: a smaller document may still fit
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
            by["documents"] += 1
            by["bytes"] += size
            stats["documents"] += 1
            stats["bytes"] += size
            if all(full(name) for name in budget):
                break
    os.replace(tmp, out_path)
    write_json_atomic(out_path.with_suffix(".stats.json"), stats)
    return stats


def fingerprint_inputs(paths: list[str]) -> list[dict]:
    """Path, size and mtime of every input file: enough to notice when user data changes."""
    out = []
    for raw in paths:
        root = Path(raw)
        if not root.exists():
            raise FileNotFoundError(f"corpus.inputs: {root} does not exist")
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        out += [{"path": str(p.resolve()), "bytes": p.stat().st_size, "mtime": p.stat().st_mtime_ns} for p in files]
    return out
