"""The funnel report of a pipeline run: ``report.md`` plus ``funnel.png``, from ``stats.json``.

::

    lmforge data report runs/data/default        # or, from Python:
    from lmforge.data.pipeline.report import write_report
    md_path = write_report("runs/data/default")

The markdown has: the totals (documents and bytes read, kept, dropped) with the check that they
add up; the funnel table (documents and MB in and out of every step, what it changed, its speed);
drop reasons with their share; examples of dropped text per step and reason; the steps' own
counters (PII redactions, languages, topics, ...); and the global steps' decisions (duplicate
clusters). The PNG shows documents and bytes remaining after each step and the largest drop
reasons.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.io import write_text_atomic

_MB = 1e6


def load_stats(out_dir: str | Path) -> dict:
    path = Path(out_dir) / "stats.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no pipeline stats here (run `lmforge data run` first)")
    return json.loads(path.read_text(encoding="utf-8"))


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _dropped(step: dict) -> int:
    return sum(d["docs"] for d in step["dropped"].values())


def _quote(text: str, limit: int = 300) -> str:
    text = text[:limit].replace("\r", "")
    lines = [line if line.strip() else "" for line in text.split("\n")[:8]]
    return "\n".join("> " + (line.replace("|", "\\|") or " ") for line in lines)


def _render_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return "`" + json.dumps(value, ensure_ascii=False)[:200] + "`"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _render_decision(name: str, decision: dict) -> list[str]:
    summary = decision.get("summary") or {}
    lines = [f"### {name}", ""]
    tables = []
    for key, value in summary.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            tables.append((key, value))
        else:
            lines.append(f"- {key}: {_render_value(value)}")
    lines.append(f"- decided in {decision.get('seconds', 0):.2f} s")
    for key, rows in tables:
        columns = list(dict.fromkeys(k for row in rows[:10] for k in row))
        lines += ["", f"{key} (first {min(len(rows), 10)} of {len(rows)}):", ""]
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        for row in rows[:10]:
            lines.append("| " + " | ".join(_render_value(row.get(c, "")) for c in columns) + " |")
    return lines + [""]


def render_markdown(stats: dict, png_name: str | None = "funnel.png") -> str:
    read, out, totals, steps = stats["read"], stats["output"], stats["totals"], stats["steps"]
    read_bytes = read.get("bytes") or (steps[0]["bytes_in"] if steps else 0)
    checks = stats["checks"]
    mark = "✓" if checks["adds_up"] else "✗"
    md = [
        f"# Data pipeline report: {stats['name']}",
        "",
        f"Read **{totals['read']:,}** documents ({read_bytes / _MB:.2f} MB) from {read['files']} file(s); "
        f"kept **{totals['kept']:,}** ({out['bytes'] / _MB:.2f} MB) in {len(out['files'])} shard file(s): "
        f"{_pct(totals['kept'], totals['read'])} of documents, {_pct(out['bytes'], read_bytes)} of bytes. "
        f"Took {stats['seconds']:.1f} s.",
        "",
        f"{mark} documents read = kept + dropped: {totals['read']:,} = {totals['kept']:,} + {totals['dropped']:,}"
        + ("" if checks["adds_up"] else " — **does not add up**: " + "; ".join(checks["problems"])),
    ]
    if read["bad_lines"]:
        md += ["", f"Malformed input records skipped: {read['bad_lines']:,} (first: `{read['bad_examples'][0]}`)"]
    md += [
        "",
        "## Funnel",
        "",
        "| # | step | docs in | docs out | dropped | kept | MB in | MB out | changed | skipped | MB/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, st in enumerate(steps, 1):
        speed = f"{st['bytes_in'] / _MB / st['seconds']:.1f}" if st["seconds"] > 0 else "-"
        scope = f" ({', '.join(st['languages'])})" if st.get("languages") else ""
        md.append(
            f"| {i} | {st['name']}{scope} | {st['docs_in']:,} | {st['docs_out']:,} | {_dropped(st):,} | "
            f"{_pct(st['docs_out'], st['docs_in'])} | {st['bytes_in'] / _MB:.2f} | {st['bytes_out'] / _MB:.2f} | "
            f"{st['changed']:,} | {st['skipped']:,} | {speed} |"
        )
    if png_name:
        md += ["", f"![funnel]({png_name})"]
    reasons = [(st["name"], r, d) for st in steps for r, d in st["dropped"].items()]
    if reasons:
        md += ["", "## Drop reasons", "", "| step | reason | docs | MB | share of all dropped |", "|---|---|---:|---:|---:|"]
        for name, reason, d in sorted(reasons, key=lambda x: -x[2]["docs"]):
            md.append(f"| {name} | {reason} | {d['docs']:,} | {d['bytes'] / _MB:.3f} | {_pct(d['docs'], totals['dropped'])} |")
        md += ["", "## Examples of dropped text", ""]
        for st in steps:
            for reason, examples in st["examples"].items():
                md += [f"### {st['name']}: {reason}", ""]
                for ex in examples:
                    md += [f"`{ex['id']}`", "", _quote(ex["text"]), ""]
    counters = [(st["name"], k, v) for st in steps for k, v in sorted(st["counters"].items())]
    if counters:
        md += ["## Step counters", "", "| step | counter | value |", "|---|---|---:|"]
        md += [f"| {name} | {key} | {value:,} |" for name, key, value in counters]
        md.append("")
    decisions = [(st["name"], st["decision"]) for st in steps if st.get("decision")]
    if decisions:
        md += ["## Global decisions (deduplication)", ""]
        for name, decision in decisions:
            md += _render_decision(name, decision)
    md += ["## Output", ""]
    md += [f"- `{f['path']}`: {f['documents']:,} documents, {f['bytes'] / _MB:.2f} MB" for f in out["files"][:50]]
    if len(out["files"]) > 50:
        md.append(f"- ... and {len(out['files']) - 50} more (see manifest.json)")
    return "\n".join(md) + "\n"


def plot_funnel(stats: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = stats["steps"]
    names = ["read"] + [st["name"] for st in steps]
    docs = [stats["totals"]["read"]] + [st["docs_out"] for st in steps]
    read_bytes = stats["read"].get("bytes") or (steps[0]["bytes_in"] if steps else 0)
    mbytes = [read_bytes / _MB] + [st["bytes_out"] / _MB for st in steps]
    reasons = sorted(((f"{st['name']}: {r}", d["docs"]) for st in steps for r, d in st["dropped"].items()), key=lambda x: -x[1])[:12]

    fig, axes = plt.subplots(1, 3, figsize=(16, max(3.5, 0.45 * len(names) + 1.5)))
    for ax, values, title, fmt in ((axes[0], docs, "documents remaining", "{:,.0f}"), (axes[1], mbytes, "MB remaining", "{:,.2f}")):
        y = range(len(names))[::-1]
        ax.barh(list(y), values, color="#4C72B0")
        ax.set_yticks(list(y), names)
        ax.set_title(title)
        top = max(values) if values else 1
        for yi, v in zip(y, values):
            ax.text(v + 0.01 * top, yi, fmt.format(v), va="center", fontsize=8)
        ax.set_xlim(0, top * 1.18 if top else 1)
    ax = axes[2]
    if reasons:
        labels, counts = zip(*reasons)
        y = list(range(len(labels)))[::-1]
        ax.barh(y, counts, color="#C44E52")
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_title("top drop reasons (documents)")
    else:
        ax.text(0.5, 0.5, "nothing dropped", ha="center", va="center")
        ax.set_axis_off()
    fig.suptitle(f"data pipeline '{stats['name']}': {stats['totals']['read']:,} read → {stats['totals']['kept']:,} kept")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_report(out_dir: str | Path) -> Path:
    """Write ``report.md`` and ``funnel.png`` into a pipeline's output directory; returns the .md path."""
    out_dir = Path(out_dir)
    stats = load_stats(out_dir)
    plot_funnel(stats, out_dir / "funnel.png")
    return write_text_atomic(out_dir / "report.md", render_markdown(stats))


def funnel_table(stats: dict):
    """The funnel as a rich Table, for the terminal."""
    from rich.table import Table

    table = Table(title=f"data pipeline '{stats['name']}'", show_lines=False)
    for col, justify in (("step", "left"), ("docs in", "right"), ("docs out", "right"), ("kept", "right"), ("MB out", "right"), ("top drop reasons", "left")):
        table.add_column(col, justify=justify)
    table.add_row("read", "", f"{stats['totals']['read']:,}", "", f"{(stats['read'].get('bytes') or 0) / _MB:.2f}", "")
    for st in stats["steps"]:
        top = sorted(st["dropped"].items(), key=lambda x: -x[1]["docs"])[:3]
        table.add_row(
            st["name"], f"{st['docs_in']:,}", f"{st['docs_out']:,}", _pct(st["docs_out"], st["docs_in"]),
            f"{st['bytes_out'] / _MB:.2f}", ", ".join(f"{r} {d['docs']:,}" for r, d in top),
        )  # fmt: skip
    return table
