"""The report card's content: collected run data -> titled sections of blocks (``render``).

One function per section; each returns ``None`` when the run has nothing for it (the missing
piece is then named in the notes section instead). Numbers are formatted here, once, so the
Markdown and the HTML show the same strings.

Usage::

    from lmforge.report.sections import build_sections
    sections = build_sections(data, figures, funnel_png)   # data from lmforge.report.build_report
"""

from __future__ import annotations

from pathlib import Path

from lmforge.io import human
from lmforge.report.plots import metric_label
from lmforge.report.render import Cards, Conversation, Details, Heading, Image, Note, Para, Section, Strong, Table

# Metrics shown as percentages; anything else (bits per byte, perplexity, loss) as a decimal.
_PERCENT_METRICS = ("acc", "accuracy", "exact_match", "em", "pass@1", "f1")


def fmt_int(n) -> str:
    return "—" if n is None else f"{int(n):,}"


def fmt_float(x, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def fmt_pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def fmt_seconds(s) -> str:
    if s is None:
        return "—"
    if s < 60:
        return f"{s:.1f}s"
    minutes, seconds = divmod(round(s), 60)
    return f"{minutes}m {seconds:02d}s" if minutes < 60 else f"{minutes // 60}h {minutes % 60:02d}m"


def fmt_metric(metric: str, value) -> str:
    if value is None:
        return "—"
    name = metric.lower().split("/")[-1].split(",")[0].removeprefix("eval_")
    percent = name in _PERCENT_METRICS or name.startswith("acc") or name.endswith(("accuracy", "_acc"))
    return fmt_pct(value) if percent else fmt_float(value, 4)


def _rel(path, run_dir: str) -> str:
    """A path relative to the run directory where it lies inside it (shorter, and still valid
    when the run directory moves)."""
    if not path:
        return "—"
    try:
        return str(Path(path).resolve().relative_to(Path(run_dir).resolve()))
    except ValueError:
        return str(path)


def _pretrain(data: dict) -> dict | None:
    return next((t for t in data["training"] if t["stage"] == "pretrain"), data["training"][0] if data["training"] else None)


def _baseline(data: dict, training: dict | None) -> float | None:
    if training and training["final"].get("baseline_loss") is not None:
        return training["final"]["baseline_loss"]
    return (data.get("shards") or {}).get("unigram_entropy_nats")


def _headline_evals(data: dict) -> list[tuple[str, str, str]]:
    """(label, value, small print) for the evaluation numbers worth a card."""
    items = []
    math = data.get("math_eval")
    if math and math.get("accuracy"):  # the demo: one card per task, the models side by side
        for key, title in (("accuracy", "synthetic math"), ("choice_accuracy", "as multiple choice")):
            accuracy = math.get(key) or {}
            if accuracy:
                final = list(accuracy)[-1]
                items.append((f"{title} ({final})", fmt_pct(accuracy[final]), " → ".join(f"{k} {fmt_pct(v)}" for k, v in accuracy.items())))
        return items
    for results in data["eval_results"]:
        for task, r in results["tasks"].items():
            metric = r.get("metric", "")
            chance = f"chance {fmt_metric(metric, r['chance'])}" if r.get("chance") is not None else {"bpb": "bits per byte"}.get(metric, metric)
            items.append((f"{results['label']}: {task}" if results.get("label") else task, fmt_metric(metric, r["value"]), chance))
    return items


def summary_section(data: dict) -> Section:
    model, pretrain = data.get("model"), _pretrain(data)
    cards, text = [], []
    if model:
        p, s = model["parameters"], model["shape"]
        cards.append(("parameters", human(p["total"]), f"{s['n_layers']} layers × d_model {s['d_model']}"))
        text += [f"A {model['hf_architecture']} model with {s['n_layers']} layers, d_model {s['d_model']}, "
                 f"{s['n_heads']} heads and a {s['vocab_size']:,}-token vocabulary: ", Strong(f"{p['total']:,} parameters"),
                 f" ({p['non_embedding']:,} outside the embedding). "]
    if pretrain:
        f = pretrain["final"]
        if f.get("tokens_seen") is not None:
            cards.append(("tokens seen", human(f["tokens_seen"]), f"{f.get('step', 0):,} {pretrain['stage']} steps"))
            text += [f"The {pretrain['stage']} stage saw ", Strong(f"{f['tokens_seen']:,} tokens"), f" in {f.get('step', 0):,} steps. "]
        baseline = _baseline(data, pretrain)
        if f.get("eval_loss") is not None:
            small = f"unigram baseline {baseline:.3f}" if baseline is not None else "nats / token"
            cards.append(("held-out loss", fmt_float(f["eval_loss"]), small))
            text += ["Final held-out loss ", Strong(f"{f['eval_loss']:.3f} nats/token")]
            if baseline is not None:
                text += [f" against a unigram baseline of {baseline:.3f} ({100 * (1 - f['eval_loss'] / baseline):.0f}% lower)"]
            text.append(". ")
    funnel = data.get("funnel")
    if funnel:
        t = funnel["totals"]
        cards.append(("documents kept", f"{t['kept']:,}", f"of {t['read']:,} read"))
    evals = _headline_evals(data)
    cards += evals[:4]
    if evals:
        text += ["Evaluation: "] + [f"{'; ' if i else ''}{label} {value} ({small})" for i, (label, value, small) in enumerate(evals)] + [". "]
    total = sum(s["seconds"] or 0 for s in data["stages"])
    if total:
        cards.append(("compute time", fmt_seconds(total), f"{len(data['stages'])} stages"))
    blocks = [Cards(cards)] if cards else []
    blocks.append(Para(text or ["No model or training metrics found in this directory."]))
    return Section("Summary", blocks)


def environment_section(data: dict) -> Section:
    env = data["built_on"]
    rows = [["date", env["date"]], ["platform", env["platform"]], ["python", env["python"]], ["torch", env["torch"]],
            ["transformers", env["transformers"] or "—"], ["lmforge", env["lmforge"]],
            ["CPU", f"{env['cpu']} ({env['cpu_count']} logical cores, torch uses {env['torch_threads']} threads)"],
            ["GPU", env["gpu"] or "none"]]
    blocks = [Table(["report built on", ""], [[k, str(v)] for k, v in rows])]
    recorded = []
    for t in data["training"]:
        f, meta = t["final"], t["meta"]
        device = " / ".join(str(x) for x in (t.get("device"), t.get("dtype")) if x) or "—"
        recorded.append([t["stage"], meta.get("lmforge_version", "—"), str(meta.get("world_size", "—")), device,
                         human(f["median_tokens_per_s"]) if f.get("median_tokens_per_s") else "—",
                         fmt_pct(f.get("median_mfu")), meta.get("saved_at", "—")])
    if recorded:
        headers = ["recorded by the run", "lmforge", "processes", "device / dtype setting", "tokens/s (median)", "MFU (median)", "last checkpoint saved"]
        if all(row[3] in ("auto / auto", "—") for row in recorded):  # says nothing the reader can use
            headers, recorded = headers[:3] + headers[4:], [row[:3] + row[4:] for row in recorded]
        blocks.append(Table(headers, recorded, "llr" + "l" * (len(headers) == 7) + "rrl"))
    return Section("Environment", blocks)


def data_section(data: dict, funnel_png: bytes | None) -> Section | None:
    blocks = []
    corpus = data.get("corpus")
    if corpus and corpus.get("by_source"):
        rows = [[name, fmt_int(s["documents"]), f"{s['bytes'] / 1e6:.2f}"] for name, s in corpus["by_source"].items()]
        rows.append(["total", fmt_int(corpus.get("documents")), f"{corpus.get('bytes', 0) / 1e6:.2f}"])
        blocks.append(Table(["corpus source", "documents", "MB"], rows, "lrr"))
    funnel = data.get("funnel")
    if funnel:
        t, read, out = funnel["totals"], funnel["read"], funnel["output"]
        blocks.append(Para([f"The cleaning pipeline '{funnel['name']}' read ", Strong(f"{t['read']:,} documents"), f" ({read['bytes'] / 1e6:.2f} MB) and kept ",
                            Strong(f"{t['kept']:,}"), f" ({out.get('bytes', 0) / 1e6:.2f} MB); {t['dropped']:,} were dropped"
                            + (" — read = kept + dropped checks out." if funnel.get("adds_up") else ".")]))
        rows = []
        for step in funnel["steps"]:
            dropped = step["docs_in"] - step["docs_out"]
            reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(step["dropped"].items(), key=lambda kv: -kv[1])[:3])
            rows.append([step["name"], fmt_int(step["docs_in"]), fmt_int(step["docs_out"]), fmt_int(dropped),
                         fmt_pct(step["docs_out"] / step["docs_in"]) if step["docs_in"] else "—", fmt_int(step["changed"]), reasons])
        blocks.append(Table(["step", "docs in", "docs out", "dropped", "kept", "changed", "top drop reasons"], rows, "lrrrrrl"))
        reasons = sorted(((s["name"], r, n) for s in funnel["steps"] for r, n in s["dropped"].items()), key=lambda x: -x[2])
        if funnel_png:
            blocks.append(Image(funnel_png, "funnel.png", "data funnel", "Documents and bytes left after each step, and the largest drop reasons."))
        if reasons and t["dropped"]:
            blocks.append(Details(f"all {len(reasons)} drop reasons", [Table(
                ["step", "reason", "documents", "share of dropped"], [[s, r, fmt_int(n), fmt_pct(n / t["dropped"])] for s, r, n in reasons], "llrr")]))
    shards = data.get("shards")
    if shards and shards.get("tokens"):
        docs = shards.get("documents") or {}
        rows = [[split, fmt_int(n), fmt_int(docs.get(split))] for split, n in shards["tokens"].items()]
        blocks.append(Table(["token shards", "tokens", "documents"], rows, "lrr",
                            caption=f"vocabulary {fmt_int(shards.get('vocab_size'))}, stored as {shards.get('dtype') or '?'}"))
    return Section("Data", blocks) if blocks else None


def tokenizer_section(data: dict) -> Section | None:
    rows = data.get("compression")
    if not rows:
        return None
    run_dir = data["run_dir"]
    table = [[_rel(r.get("tokenizer"), run_dir), _rel(r.get("file"), run_dir), fmt_int(r.get("documents")), fmt_int(r.get("bytes")),
              fmt_int(r.get("tokens")), fmt_float(r.get("bytes_per_token")), fmt_float(r.get("chars_per_token"))] for r in rows]
    vocab = (data.get("shards") or {}).get("vocab_size")
    caption = f"vocabulary {vocab:,} tokens; more bytes per token = fewer tokens for the same text" if vocab else ""
    return Section("Tokenizer", [Table(["tokenizer", "evaluated on", "documents", "bytes", "tokens", "bytes/token", "chars/token"], table, "llrrrrr", caption)])


def _flat_scalars(record: dict, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for key, value in record.items():
        if isinstance(value, dict):
            out += _flat_scalars(value, f"{prefix}{key}.")
        elif isinstance(value, bool) or value is None or isinstance(value, list):
            continue
        elif isinstance(value, (int, float)):
            out.append((prefix + key, f"{value:,}" if isinstance(value, int) else f"{value:.4g}"))
    return out


def _training_rows(data: dict, t: dict) -> dict[str, str]:
    """label -> formatted value of one training stage's final numbers."""
    f = t["final"]
    rows = {"steps": fmt_int(f.get("step")), "tokens seen": fmt_int(f.get("tokens_seen")), "final train loss": fmt_float(f.get("train_loss"))}
    if f.get("eval_loss") is not None:
        rows.update({"final held-out loss": fmt_float(f["eval_loss"]), "best held-out loss": fmt_float(f.get("best_eval_loss"))})
    if t["stage"] == "pretrain" or f.get("baseline_loss") is not None:
        baseline = _baseline(data, t)
        if baseline is not None:
            rows["unigram baseline loss"] = fmt_float(baseline)
    for key in sorted(f):
        if (key.startswith("eval_") and key not in ("eval_loss", "eval_tokens", "eval_bytes")) or (key.startswith("task/") and not key.endswith(("/chance", "/n"))):
            rows[metric_label(key)] = fmt_metric(key, f[key])
    if f.get("median_tokens_per_s"):
        rows["tokens/s (median)"] = human(f["median_tokens_per_s"])
    rows["checkpoint"] = _rel(t["checkpoint"], data["run_dir"])
    return rows


def training_section(data: dict, figures: dict[str, list[dict]]) -> Section | None:
    if not data["training"]:
        return None
    # One table, a column per stage: the stages side by side, then each stage's curves.
    per_stage = [_training_rows(data, t) for t in data["training"]]
    labels = [label for label in dict.fromkeys(label for rows in per_stage for label in rows) if label != "checkpoint"] + ["checkpoint"]
    table = [[label] + [rows.get(label, "—") for rows in per_stage] for label in labels]
    blocks = [Table(["", *(t["stage"] for t in data["training"])], table, "l" + "r" * len(per_stage))]
    for t in data["training"]:
        blocks.append(Heading(t["stage"]))
        if t.get("diverged_at") is not None:
            blocks.append(Note(f"{t['stage']} diverged (NaN/inf loss) at step {t['diverged_at']}."))
        for fig in figures.get(t["stage"], []):
            blocks.append(Image(fig["png"], Path(fig["path"]).name, fig["title"], fig["caption"]))
        for name, record in t["data"].items():
            scalars = _flat_scalars(record)
            if scalars:
                blocks.append(Details(f"{t['stage']} training data ({name})", [Table(["", ""], [list(x) for x in scalars], "lr")]))
    return Section("Training", blocks)


def evaluation_section(data: dict) -> Section | None:
    blocks = []
    for results in data["eval_results"]:
        rows = []
        for task, r in results["tasks"].items():
            metric = r.get("metric", "")
            value, chance = r["value"], r.get("chance")
            if chance is None:
                gap = "—"
            elif fmt_metric(metric, value).endswith("%"):
                gap = f"{100 * (value - chance):+.1f} pts"
            else:
                gap = f"{value - chance:+.4f}"
            rows.append([task, r.get("kind", "—"), metric, fmt_metric(metric, value), fmt_metric(metric, chance) if chance is not None else "—",
                         gap, fmt_int(r.get("n")), fmt_seconds(r.get("seconds"))])
        caption = (f"{results['label']}: " if results.get("label") else "") + f"{_rel(results['checkpoint'], data['run_dir'])} — {_rel(results['file'], data['run_dir'])}"
        blocks.append(Table(["task", "kind", "metric", "value", "chance", "vs chance", "n", "time"], rows, "lllrrrrr", caption))
        for task, r in results["tasks"].items():
            subjects = (r.get("details") or {}).get("subjects")
            if subjects:
                sub_rows = [[name, fmt_int(s.get("n")), fmt_int(s.get("correct")), fmt_pct(s.get("accuracy"))] for name, s in sorted(subjects.items())]
                blocks.append(Details(f"{task}: {len(subjects)} subjects", [Table(["subject", "n", "correct", "accuracy"], sub_rows, "lrrr")]))
    math = data.get("math_eval")
    if math and math.get("results"):
        langs = sorted({lang for r in math["results"].values() for lang in r.get("by_lang", {})})
        rows = [[name, fmt_pct(r.get("accuracy")), f"{r.get('correct', '?')} / {r.get('n', '?')}"]
                + [fmt_pct(r.get("by_lang", {}).get(lang, {}).get("accuracy")) for lang in langs] + [_rel(r.get("checkpoint"), data["run_dir"])]
                for name, r in math["results"].items()]
        blocks.append(Table(["model", "accuracy", "correct", *langs, "checkpoint"], rows, "lrr" + "r" * len(langs) + "l",
                            f"synthetic math: exact final answers on {math.get('n')} held-out problems, greedy decoding (chance ≈ 0: the answer is a number)"))
    return Section("Evaluation", blocks) if blocks else None


def samples_section(data: dict, max_examples: int = 6) -> Section | None:
    blocks = []
    samples = data.get("samples")
    if samples and samples.get("samples"):
        sampling = samples.get("sampling") or {}
        how = ", ".join(f"{k} {sampling[k]}" for k in ("temperature", "top_k", "top_p", "max_new_tokens") if k in sampling)
        blocks.append(Para([f"Continuations by {_rel(samples.get('checkpoint'), data['run_dir'])}" + (f" ({how})." if how else ".")]))
        for i, s in enumerate(samples["samples"], 1):
            blocks.append(Conversation(f"sample {i}", [("prompt", s.get("prompt", "")), ("completion", s.get("completion", ""))]))
    math = data.get("math_eval")
    if math:
        for chat in math.get("chats", []):
            blocks.append(Conversation("chat with the final model (greedy)", [("user", chat.get("prompt", "")), ("assistant", chat.get("reply", ""))]))
        final = list(math.get("results", {}).values())[-1:] or [{}]
        examples = final[0].get("examples") or []
        if examples:
            # Some right and some wrong answers, when there are both: a fairer picture than the first few.
            right, wrong = [e for e in examples if e.get("correct")], [e for e in examples if not e.get("correct")]
            half = max_examples // 2
            shown = right[: max(half, max_examples - len(wrong))] + wrong[: max(half, max_examples - len(right))]
            rows = [[e.get("prompt", ""), e.get("reply", ""), str(e.get("pred")), str(e.get("gold")), "✓" if e.get("correct") else "✗"]
                    for e in shown[:max_examples]]
            blocks.append(Table(["problem", "reply", "extracted", "gold", ""], rows, caption="held-out math problems answered by the final model"))
    for results in data["eval_results"]:
        for task, r in results["tasks"].items():
            examples = [e for e in (r.get("details") or {}).get("examples") or [] if isinstance(e, dict)]
            for e in examples[:max_examples]:
                turns = [(k, str(e[k])) for k in ("prompt", "question", "reply", "completion") if e.get(k) is not None]
                if turns:
                    mark = "" if e.get("correct") is None else (" ✓" if e["correct"] else " ✗")
                    answers = ", ".join(f"{name} {e[key]}" for name, key in (("extracted", "pred"), ("gold", "gold")) if e.get(key) is not None)
                    blocks.append(Conversation(f"{task}{mark}" + (f" — {answers}" if answers else ""), turns))
    return Section("Samples", blocks) if blocks else None


def timings_section(data: dict) -> Section | None:
    stages = data["stages"]
    if not stages:
        return None
    total = sum(s["seconds"] or 0 for s in stages)
    rows = [[s["name"], s["status"], fmt_seconds(s["seconds"]), fmt_pct(s["seconds"] / total) if total and s["seconds"] else "—", _rel(s["dir"], data["run_dir"])]
            for s in stages]
    rows.append(["total", "", fmt_seconds(total), "100.0%" if total else "—", ""])
    return Section("Timings", [Table(["stage", "this run", "time", "share", "directory"], rows, "llrrl",
                                     "each stage's time when it ran (a cached stage reused that output)")])


def build_sections(data: dict, figures: dict[str, list[dict]], funnel_png: bytes | None) -> list[Section]:
    sections = [
        summary_section(data),
        environment_section(data),
        data_section(data, funnel_png),
        tokenizer_section(data),
        training_section(data, figures),
        evaluation_section(data),
        samples_section(data),
        timings_section(data),
    ]
    if data["notes"]:
        sections.append(Section("Notes", [Note(n) for n in data["notes"]]))
    return [s for s in sections if s is not None]
