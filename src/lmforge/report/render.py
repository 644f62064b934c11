"""The report card's building blocks and their two renderings: Markdown and self-contained HTML.

A report is a list of ``Section``s holding blocks (paragraphs, headline cards, tables, images,
sample conversations, notes). ``to_markdown`` writes GitHub-flavoured Markdown that refers to
the PNGs beside it; ``to_html`` writes one file with the PNGs embedded as base64 data URIs and
its CSS inline, so it can be mailed or attached as it is (no JavaScript).

All text (model output above all) is escaped on the way out: a sample containing ``<script>``
shows as text in both renderings.

Usage::

    sections = [Section("Results", [Para(["accuracy ", Strong("41.0%")]), Table(["task", "acc"], [["x", "41.0%"]])])]
    write_text_atomic("report.md", to_markdown("My run", sections))
    write_text_atomic("report.html", to_html("My run", "built today", sections))
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field


@dataclass
class Heading:
    text: str


@dataclass
class Strong:
    text: str


@dataclass
class Para:
    parts: list  # str | Strong


@dataclass
class Cards:
    items: list[tuple[str, str, str]]  # (label, value, small print)


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    align: str = ""  # one letter per column: "l" or "r"; left when missing
    caption: str = ""


@dataclass
class Image:
    png: bytes
    file: str  # path relative to the markdown file
    alt: str
    caption: str = ""


@dataclass
class Conversation:
    title: str
    turns: list[tuple[str, str]]  # (role, text): prompt/completion or user/assistant


@dataclass
class Note:
    text: str


@dataclass
class Details:
    summary: str
    blocks: list


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


# --- Markdown ---------------------------------------------------------------------------------

_MD_SPECIAL = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "`": "\\`", "*": "\\*", "|": "\\|", "\\": "\\\\"})


def md_escape(text: str) -> str:
    """Text that Markdown shows as it is: no HTML, no emphasis, no table breaks, one line."""
    return str(text).translate(_MD_SPECIAL).replace("\r", "").replace("\n", "<br>")


def _fence(text: str) -> str:
    # A fence longer than any backtick run inside, so model text cannot close it early.
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _md_block(block) -> list[str]:
    if isinstance(block, Heading):
        return [f"### {md_escape(block.text)}", ""]
    if isinstance(block, Para):
        return ["".join(f"**{md_escape(p.text)}**" if isinstance(p, Strong) else md_escape(p) for p in block.parts), ""]
    if isinstance(block, Cards):
        values = [f"**{md_escape(v)}**" for _, v, _ in block.items]
        smalls = [md_escape(s) for _, _, s in block.items]
        headers = [md_escape(label) for label, _, _ in block.items]
        return ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|",
                "| " + " | ".join(values) + " |", "| " + " | ".join(smalls) + " |", ""]
    if isinstance(block, Table):
        lines = [f"*{md_escape(block.caption)}*", ""] if block.caption else []
        align = [("---:" if block.align[i:i + 1] == "r" else "---") for i in range(len(block.headers))]
        lines += ["| " + " | ".join(md_escape(h) for h in block.headers) + " |", "|" + "|".join(align) + "|"]
        lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in block.rows]
        return lines + [""]
    if isinstance(block, Image):
        lines = [f"![{md_escape(block.alt)}]({block.file})", ""]
        return lines + ([f"*{md_escape(block.caption)}*", ""] if block.caption else [])
    if isinstance(block, Conversation):
        lines = [f"**{md_escape(block.title)}**", ""]
        for role, text in block.turns:
            fence = _fence(text)
            lines += [f"*{md_escape(role)}:*", "", f"{fence}text", text.replace("\r", ""), fence, ""]
        return lines
    if isinstance(block, Note):
        return [f"> {md_escape(block.text)}", ""]
    if isinstance(block, Details):
        return [f"**{md_escape(block.summary)}**", ""] + [line for b in block.blocks for line in _md_block(b)]
    raise TypeError(f"unknown report block {type(block).__name__}")


def to_markdown(title: str, subtitle: str, sections: list[Section]) -> str:
    lines = [f"# {md_escape(title)}", "", f"*{md_escape(subtitle)}*", ""]
    for section in sections:
        lines += [f"## {md_escape(section.title)}", ""]
        for block in section.blocks:
            lines += _md_block(block)
    return "\n".join(lines).rstrip() + "\n"


# --- HTML ---------------------------------------------------------------------------------------

CSS = """
:root { --fg:#1f2328; --muted:#656d76; --line:#d0d7de; --bg:#f6f8fa; --accent:#0969da; }
* { box-sizing: border-box; }
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", "Noto Sans", "PingFang SC",
       "Microsoft YaHei", "Noto Sans CJK SC", sans-serif; color: var(--fg); margin: 0; background: #fff; }
main { max-width: 1040px; margin: 0 auto; padding: 28px 24px 64px; }
h1 { font-size: 28px; margin: 0 0 4px; }
h3 { font-size: 16px; margin: 22px 0 8px; }
h2 { font-size: 20px; margin: 36px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
.subtitle { color: var(--muted); margin: 0 0 18px; }
nav { font-size: 13px; margin: 0 0 8px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; white-space: nowrap; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 14px 0; }
.card { flex: 1 1 150px; border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; background: var(--bg); }
.card .label { font-size: 12px; color: var(--muted); text-transform: uppercase; letter-spacing: .03em; }
.card .value { font-size: 22px; font-weight: 600; }
.card .small { font-size: 12px; color: var(--muted); }
.scroll { max-width: 100%; overflow-x: auto; margin: 8px 0 16px; }
table { border-collapse: collapse; font-size: 14px; }
caption { caption-side: top; text-align: left; color: var(--muted); font-size: 13px; padding-bottom: 4px; }
th, td { border: 1px solid var(--line); padding: 5px 10px; vertical-align: top; white-space: pre-line; }
th { background: var(--bg); text-align: left; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fbfcfd; }
figure { margin: 10px 0 22px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: 13px; }
.conv { border: 1px solid var(--line); border-radius: 8px; margin: 10px 0; overflow: hidden; }
.conv h3 { font-size: 13px; margin: 0; padding: 6px 12px; background: var(--bg); border-bottom: 1px solid var(--line); }
.turn { padding: 6px 12px; }
.role { font-size: 12px; color: var(--muted); font-weight: 600; }
pre { margin: 2px 0 4px; white-space: pre-wrap; word-break: break-word; font: 13px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, "Noto Sans Mono CJK SC", monospace; }
.turn.prompt pre, .turn.user pre { color: var(--accent); }
.note { color: var(--muted); font-size: 13px; border-left: 3px solid var(--line); padding: 2px 10px; margin: 6px 0; }
details { margin: 6px 0 14px; } summary { cursor: pointer; color: var(--accent); }
footer { color: var(--muted); font-size: 12px; margin-top: 40px; }
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _html_block(block) -> str:
    if isinstance(block, Heading):
        return f"<h3>{_e(block.text)}</h3>"
    if isinstance(block, Para):
        return "<p>" + "".join(f"<strong>{_e(p.text)}</strong>" if isinstance(p, Strong) else _e(p) for p in block.parts) + "</p>"
    if isinstance(block, Cards):
        cards = "".join(
            f'<div class="card"><div class="label">{_e(label)}</div><div class="value">{_e(value)}</div>'
            f'<div class="small">{_e(small)}</div></div>'
            for label, value, small in block.items
        )
        return f'<div class="cards">{cards}</div>'
    if isinstance(block, Table):
        def cls(i):
            return ' class="r"' if block.align[i:i + 1] == "r" else ""

        head = "".join(f"<th{cls(i)}>{_e(h)}</th>" for i, h in enumerate(block.headers))
        body = "".join("<tr>" + "".join(f"<td{cls(i)}>{_e(c)}</td>" for i, c in enumerate(row)) + "</tr>" for row in block.rows)
        caption = f"<caption>{_e(block.caption)}</caption>" if block.caption else ""
        return f'<div class="scroll"><table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    if isinstance(block, Image):
        data = base64.b64encode(block.png).decode("ascii")
        caption = f"<figcaption>{_e(block.caption)}</figcaption>" if block.caption else ""
        return f'<figure><img alt="{_e(block.alt)}" src="data:image/png;base64,{data}">{caption}</figure>'
    if isinstance(block, Conversation):
        turns = "".join(
            f'<div class="turn {_e(role.split()[0].lower())}"><div class="role">{_e(role)}</div><pre>{_e(text)}</pre></div>'
            for role, text in block.turns
        )
        return f'<div class="conv"><h3>{_e(block.title)}</h3>{turns}</div>'
    if isinstance(block, Note):
        return f'<p class="note">{_e(block.text)}</p>'
    if isinstance(block, Details):
        return f"<details><summary>{_e(block.summary)}</summary>" + "".join(_html_block(b) for b in block.blocks) + "</details>"
    raise TypeError(f"unknown report block {type(block).__name__}")


def to_html(title: str, subtitle: str, sections: list[Section], footer: str = "") -> str:
    nav = "".join(f'<a href="#{s.anchor}">{_e(s.title)}</a>' for s in sections)
    body = "".join(
        f'<section id="{s.anchor}"><h2>{_e(s.title)}</h2>' + "".join(_html_block(b) for b in s.blocks) + "</section>" for s in sections
    )
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head>\n"
        f'<body><main><h1>{_e(title)}</h1><p class="subtitle">{_e(subtitle)}</p><nav>{nav}</nav>\n{body}\n'
        f"<footer>{_e(footer)}</footer></main></body></html>\n"
    )
