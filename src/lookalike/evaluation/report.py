"""Write an evaluation as results.json, report.md and report.html (with plots under plots/).

Tables put configurations side by side (rows: task × metric) with the best value in bold
and the random-ranking baseline in its own column; headline metrics carry 95 % bootstrap
intervals.  The HTML page is self-contained apart from the PNG plots next to it: thumbnails
are inlined, and the embedding map shows each product's thumbnail on hover.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .runner import Evaluation

LOWER_IS_BETTER = {"bytes_per_item", "build_s", "query_p50_ms", "query_p99_ms", "embed_ms_per_image"}


def _fmt(value: float | str | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"


def _cell(metric: dict[str, float]) -> str:
    text = _fmt(metric["mean"])
    if not math.isnan(metric.get("ci_low", float("nan"))):
        text += f" ({_fmt(metric['ci_low'])}–{_fmt(metric['ci_high'])})"
    return text


def quality_rows(ev: Evaluation) -> list[dict[str, Any]]:
    """One row per (task, metric): cells per configuration, the best marked, and the baseline."""
    rows = []
    configs = [c.name for c in ev.configs]
    for task in ev.suite.tasks:
        per_config = ev.tasks.get(task.name, {})
        metric_names = list(dict.fromkeys(m for r in per_config.values() for m in r.metrics))
        for metric in metric_names:
            values = {c: per_config[c].metrics.get(metric) for c in configs if c in per_config}
            # Compared as printed: values that read the same are equally best.
            means = {c: round(v["mean"], 3) for c, v in values.items() if v and not math.isnan(v["mean"])}
            best = max(means.values()) if means else None
            baseline = next((r.baseline.get(metric) for r in per_config.values() if metric in r.baseline), None)
            rows.append({"task": task.name, "metric": metric, "cells": {c: (_cell(v) if v else "–") for c, v in values.items()},
                         "best": {c for c, m in means.items() if len(means) > 1 and m == best}, "baseline": _fmt(baseline)})
    return rows


def efficiency_rows(ev: Evaluation) -> list[dict[str, Any]]:
    rows = []
    configs = [c.name for c in ev.configs]
    datasets = list(dict.fromkeys(d for c in configs for d in ev.efficiency.get(c, {})))
    for dataset in datasets:
        keys = list(dict.fromkeys(k for c in configs for k in ev.efficiency.get(c, {}).get(dataset, {})))
        for key in keys:
            values = {c: ev.efficiency.get(c, {}).get(dataset, {}).get(key) for c in configs}
            finite = {c: round(v, 3) for c, v in values.items() if isinstance(v, (int, float)) and not math.isnan(v)}
            best = (min if key in LOWER_IS_BETTER else max)(finite.values()) if finite and key != "items" else None
            rows.append({"task": f"efficiency: {dataset}", "metric": key, "cells": {c: _fmt(v, 3) for c, v in values.items()},
                         "best": {c for c, v in finite.items() if len(finite) > 1 and v == best}, "baseline": ""})
    return rows


# ---- plots ------------------------------------------------------------------------------------
def _plots(ev: Evaluation, out: Path) -> dict[str, list[tuple[str, str]]]:
    """PNG plots per task (and the maps); returns task name -> [(title, relative path)]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "plots").mkdir(parents=True, exist_ok=True)
    made: dict[str, list[tuple[str, str]]] = {}

    def save(fig, name: str, task: str, title: str) -> None:
        path = out / "plots" / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.setdefault(task, []).append((title, f"plots/{name}"))

    for t_index, task in enumerate(ev.suite.tasks):
        results = ev.tasks.get(task.name, {})
        slug = f"task{t_index + 1}"
        if task.type == "retrieval":
            fig, ax = plt.subplots(figsize=(6, 4))
            for config, r in results.items():
                if r.plots.get("pr_precision"):
                    ax.plot(r.plots["pr_levels"], r.plots["pr_precision"], marker=".", label=config)
            base = next((r.baseline.get("P@1") for r in results.values()), None)
            if base is not None:
                ax.axhline(base, color="grey", linestyle="--", label="random")
            ax.set(xlabel="recall", ylabel="interpolated precision", title=f"{task.name}: precision-recall", ylim=(0, 1.02))
            ax.legend()
            save(fig, f"{slug}_pr.png", task.name, "Precision–recall (mean over queries)")
        elif task.type == "pairs":
            fig, ax = plt.subplots(figsize=(6, 4))
            bins = np.linspace(-0.2, 1.0, 61)
            for config, r in results.items():
                if r.plots.get("positive_sims"):
                    ax.hist(r.plots["positive_sims"], bins=bins.tolist(), alpha=0.5, label=f"{config}: true pairs")
                if r.plots.get("negative_sims"):
                    ax.hist(r.plots["negative_sims"], bins=bins.tolist(), alpha=0.5, label=f"{config}: hard negatives")
            ax.set(xlabel="cosine similarity", ylabel="pairs", title=f"{task.name}: similarity")
            ax.legend(fontsize=8)
            save(fig, f"{slug}_similarity.png", task.name, "Similarity of true pairs vs hard negatives")
        elif task.type == "classification":
            first = next(iter(results.values()), None)
            if first and first.plots.get("per_class"):
                classes = sorted(first.plots["per_class"], key=lambda c: -first.plots["per_class"][c]["support"])[:30]
                fig, ax = plt.subplots(figsize=(max(6, len(classes) * 0.35), 4))
                width = 0.8 / max(1, len(results))
                for j, (config, r) in enumerate(results.items()):
                    ax.bar(np.arange(len(classes)) + j * width, [r.plots["per_class"].get(c, {}).get("f1", 0) for c in classes], width, label=config)
                ax.set_xticks(np.arange(len(classes)) + width * (len(results) - 1) / 2, classes, rotation=60, ha="right", fontsize=8)
                ax.set(ylabel="F1", ylim=(0, 1), title=f"{task.name}: per-class F1")
                ax.legend()
                save(fig, f"{slug}_f1.png", task.name, "Per-class F1 (commonest classes)")
            for config, r in results.items():
                if r.plots.get("confusion"):
                    _confusion_plot(plt, r.plots, f"{task.name} ({config})")
                    save(plt.gcf(), f"{slug}_confusion_{_slug(config)}.png", task.name, f"Confusion matrix, {config} (rows: truth, commonest classes)")
        elif task.type == "street_to_shop":
            labels = sorted({l for r in results.values() for l in r.plots.get("per_label_p10", {})})
            if labels:
                fig, ax = plt.subplots(figsize=(max(6, len(labels) * 0.35), 4))
                width = 0.8 / max(1, len(results))
                for j, (config, r) in enumerate(results.items()):
                    ax.bar(np.arange(len(labels)) + j * width, [r.plots["per_label_p10"].get(l, 0) for l in labels], width, label=config)
                ax.set_xticks(np.arange(len(labels)) + width * (len(results) - 1) / 2, labels, rotation=60, ha="right", fontsize=8)
                ax.set(ylabel="P@10", ylim=(0, 1), title=f"{task.name}: precision@10 by street label")
                ax.legend()
                save(fig, f"{slug}_labels.png", task.name, "Precision@10 per street label")
    for config, points in ev.maps.items():
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(7, 6))
        labels = points["labels"]
        common = [l for l, _ in sorted(((l, labels.count(l)) for l in set(labels)), key=lambda x: -x[1])[:12]]
        colours = matplotlib.colormaps["tab20"](range(20))
        for j, label in enumerate(common + ["other"]):
            idx = [i for i, l in enumerate(labels) if (l == label if label != "other" else l not in common)]
            if idx:
                colour = "#bbbbbb" if label == "other" else colours[(2 * j) % 20 if j < 10 else (2 * (j - 10) + 1) % 20]
                ax.scatter(np.array(points["x"])[idx], np.array(points["y"])[idx], s=8, label=label, alpha=0.8, color=colour)
        ax.set(title=f"{config}: embedding map (t-SNE) by {points['column']}", xticks=[], yticks=[])
        ax.legend(fontsize=7, markerscale=2, loc="best")
        save(fig, f"map_{_slug(config)}.png", "__maps__", f"Embedding map: {config}")
    return made


def _confusion_plot(plt, plots: dict[str, Any], title: str, limit: int = 25) -> None:
    """Row-normalised confusion matrix over the commonest classes."""
    classes = plots["classes"]
    keep = sorted(range(len(classes)), key=lambda i: -plots["per_class"][classes[i]]["support"])[:limit]
    matrix = np.array(plots["confusion"], dtype=float)[np.ix_(keep, keep)]
    matrix = matrix / np.maximum(1, matrix.sum(axis=1, keepdims=True))
    size = max(5, len(keep) * 0.32)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    names = [classes[i] for i in keep]
    ax.set_xticks(range(len(keep)), names, rotation=70, ha="right", fontsize=7)
    ax.set_yticks(range(len(keep)), names, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(image, ax=ax, fraction=0.046)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text)[:40]


# ---- writers ------------------------------------------------------------------------------------
def _markdown(ev: Evaluation, plots: dict[str, list[tuple[str, str]]]) -> str:
    configs = [c.name for c in ev.configs]
    lines = [f"# Evaluation: {ev.suite.name}", "",
             f"Suite `{ev.suite.path}`, seed {ev.suite.seed}, {ev.suite.bootstrap} bootstrap resamples; "
             f"intervals are 95 % bootstrap intervals over queries. Best value per row in **bold**. Ran in {ev.seconds:.0f} s.", "",
             "Configurations: " + "; ".join(f"**{c.name}** `{json.dumps(c.settings)}`" for c in ev.configs), "", "## Quality", "",
             "| task | metric | " + " | ".join(configs) + " | random |", "|---|---|" + "---|" * (len(configs) + 1)]
    for row in quality_rows(ev):
        cells = [f"**{row['cells'].get(c, '–')}**" if c in row["best"] else row["cells"].get(c, "–") for c in configs]
        lines.append(f"| {row['task']} | {row['metric']} | " + " | ".join(cells) + f" | {row['baseline']} |")
    lines += _codes_markdown(ev)
    lines += ["", "## Efficiency", "", "| data set | measure | " + " | ".join(configs) + " |", "|---|---|" + "---|" * len(configs)]
    for row in efficiency_rows(ev):
        cells = [f"**{row['cells'].get(c, '–')}**" if c in row["best"] else row["cells"].get(c, "–") for c in configs]
        lines.append(f"| {row['task'].removeprefix('efficiency: ')} | {row['metric']} | " + " | ".join(cells) + " |")
    lines += ["", "## Notes", ""]
    for config, sets in ev.datasets.items():
        for name, info in sets.items():
            lines.append(f"- **{config}**, data set **{name}**: {info['items']} items evaluated, {len(info['skipped'])} skipped"
                         + (": " + "; ".join(f"{s['item']} ({s['reason']})" for s in info["skipped"][:5]) + (" …" if len(info["skipped"]) > 5 else "") if info["skipped"] else ""))
    for task in ev.suite.tasks:
        for config, r in ev.tasks.get(task.name, {}).items():
            for note in r.notes:
                lines.append(f"- {task.name} ({config}): {note}")
    lines += ["", "## Plots", ""]
    for heading, items in plots.items():
        for title, path in items:
            lines.append(f"**{title}**" + (f" — {heading}" if heading != "__maps__" else "") + f"\n\n![{title}]({path})\n")
    lines += ["## Worst queries", "", "Lowest average precision per retrieval task and configuration: see report.html for thumbnails.", ""]
    for task in ev.suite.tasks:
        for config, r in ev.tasks.get(task.name, {}).items():
            for w in r.plots.get("worst", [])[:3]:
                marks = ", ".join(f"{item}{' ✓' if rel else ''}" for item, rel in zip(w["results"], w["relevant"]))
                lines.append(f"- {task.name} ({config}): query {w['query']} (AP {_fmt(w['ap'])}) → {marks}")
    return "\n".join(lines) + "\n"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}
th{background:#f3f3f3}td.best{font-weight:bold;background:#eef7ee}td.base{color:#777}
.gallery{display:flex;gap:.4rem;align-items:center;margin:.4rem 0}.gallery img{height:90px;border:3px solid transparent}
.gallery img.ok{border-color:#3a3}.gallery img.bad{border-color:#c33}.gallery img.q{border-color:#36c}
#tip{position:fixed;pointer-events:none;display:none;background:#fff;border:1px solid #999;padding:4px;font-size:.8rem}
#tip img{display:block;max-height:140px}svg circle{opacity:.8}svg circle:hover{opacity:1;stroke:#000}
"""

_MAP_JS = """
const tip=document.getElementById('tip');
document.querySelectorAll('svg.map circle').forEach(c=>{
 c.addEventListener('mousemove',e=>{tip.style.display='block';tip.style.left=(e.clientX+12)+'px';tip.style.top=(e.clientY+12)+'px';
  tip.innerHTML=(c.dataset.thumb?'<img src="'+c.dataset.thumb+'" alt="">':'')+c.dataset.label;});
 c.addEventListener('mouseleave',()=>{tip.style.display='none';});});
"""


def codes_tables(ev: Evaluation) -> list[tuple[str, str, dict[str, Any]]]:
    """(task, configuration, table) for every task that produced a representation table."""
    return [(task.name, config, r.plots["codes_table"]) for task in ev.suite.tasks
            for config, r in ev.tasks.get(task.name, {}).items() if r.plots.get("codes_table")]


def _code_cell(row: str, value: float) -> str:
    if row == "bytes/product":
        return f"{value:,.0f}"
    if row.startswith("latency"):
        return f"{value:.2f}"
    return _fmt(value)


def _codes_markdown(ev: Evaluation) -> list[str]:
    lines: list[str] = []
    for task, config, table in codes_tables(ev):
        columns = table["columns"]
        lines += ["", f"## {task} ({config})", "", "Every number is measured on held-out products only.", "",
                  "| measure | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        for row in table["rows"]:
            lines.append(f"| {row} | " + " | ".join(_code_cell(row, table["cells"][c].get(row, float("nan"))) for c in columns) + " |")
    return lines


def _codes_html(ev: Evaluation) -> str:
    parts = []
    for task, config, table in codes_tables(ev):
        columns = table["columns"]
        head = "<tr><th>measure</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"
        body = "".join("<tr><td>" + html.escape(row) + "</td>" + "".join(f"<td>{_code_cell(row, table['cells'][c].get(row, float('nan')))}</td>" for c in columns) + "</tr>"
                       for row in table["rows"])
        parts.append(f"<h2>{html.escape(task)} ({html.escape(config)})</h2><p>Every number is measured on held-out products only.</p><table>{head}{body}</table>")
    return "".join(parts)


def _html_table(rows: list[dict[str, Any]], configs: list[str], first: str, with_baseline: bool) -> str:
    head = f"<tr><th>{first}</th><th>metric</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in configs) + ("<th>random</th>" if with_baseline else "") + "</tr>"
    body = []
    for row in rows:
        cells = "".join(f"<td class='{'best' if c in row['best'] else ''}'>{html.escape(row['cells'].get(c, '–'))}</td>" for c in configs)
        base = f"<td class='base'>{html.escape(row['baseline'])}</td>" if with_baseline else ""
        body.append(f"<tr><td>{html.escape(row['task'])}</td><td>{html.escape(row['metric'])}</td>{cells}{base}</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _svg_map(points: dict[str, Any], thumbs: dict[str, str]) -> str:
    if not points:
        return ""
    x, y = np.array(points["x"]), np.array(points["y"])
    w, h, pad = 760, 560, 10
    sx = (x - x.min()) / max(1e-9, np.ptp(x)) * (w - 2 * pad) + pad
    sy = (y - y.min()) / max(1e-9, np.ptp(y)) * (h - 2 * pad) + pad
    labels = points["labels"]
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939"]
    common = [l for l, _ in sorted(((l, labels.count(l)) for l in set(labels)), key=lambda t: -t[1])][: len(palette)]
    colour = {l: palette[i] for i, l in enumerate(common)}
    circles = [
        f"<circle cx='{a:.1f}' cy='{b:.1f}' r='4' fill='{colour.get(l, '#bbb')}' data-label='{html.escape(f'{i} · {l}', quote=True)}' data-thumb='{thumbs.get(i, '')}'/>"
        for a, b, l, i in zip(sx, sy, labels, points["ids"])
    ]
    legend = " ".join(f"<span style='color:{c}'>●</span> {html.escape(l)}" for l, c in colour.items())
    return f"<p>{legend} <span style='color:#bbb'>●</span> other</p><svg class='map' width='{w}' height='{h}' style='border:1px solid #ddd'>{''.join(circles)}</svg>"


def _look_html(ev: Evaluation) -> str:
    """Shop the look: street photos with the garments found (yellow) and the truth (white), and
    each matched garment's top results."""
    parts = []
    for task in ev.suite.tasks:
        for config, r in ev.tasks.get(task.name, {}).items():
            gallery = r.plots.get("look_gallery", [])
            if not gallery:
                continue
            thumbs = ev.thumbnails.get(config, {})
            parts.append(f"<h2>{html.escape(task.name)} ({html.escape(config)})</h2><p>White: ground-truth garments; yellow: found. "
                         "Each found garment's top results, with its P@10.</p>")
            for photo in gallery:
                rows = "".join(
                    f"<div class='gallery'><span>{html.escape(g['label'])} → {html.escape(g['group'])}, P@10 {g['p10']:.1f}</span>"
                    + "".join(f"<img src='{thumbs.get(item, '')}' alt='{html.escape(item)}' title='{html.escape(item)}'>" for item in g["results"])
                    + "</div>" for g in photo["garments"])
                parts.append(f"<div class='gallery'><img class='q' src='{photo.get('thumbnail', '')}' alt='{html.escape(photo['photo'])}' "
                             f"style='height:240px'><div>{rows}</div></div>")
    return "".join(parts)


def _html(ev: Evaluation, plots: dict[str, list[tuple[str, str]]]) -> str:
    configs = [c.name for c in ev.configs]
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Evaluation: {html.escape(ev.suite.name)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Evaluation: {html.escape(ev.suite.name)}</h1>",
             f"<p>Suite <code>{html.escape(str(ev.suite.path))}</code>, seed {ev.suite.seed}; 95 % bootstrap intervals over queries "
             f"({ev.suite.bootstrap} resamples); best value per row in bold. Ran in {ev.seconds:.0f} s.</p><ul>"
             + "".join(f"<li><b>{html.escape(c.name)}</b>: <code>{html.escape(json.dumps(c.settings))}</code></li>" for c in ev.configs) + "</ul>",
             "<h2>Quality</h2>", _html_table(quality_rows(ev), configs, "task", True),
             _codes_html(ev), "<h2>Efficiency</h2>", _html_table(efficiency_rows(ev), configs, "data set", False), "<h2>Plots</h2>"]
    for heading, items in plots.items():
        if heading == "__maps__":
            continue
        for title, path in items:
            parts.append(f"<h3>{html.escape(heading)}: {html.escape(title)}</h3><img src='{path}' alt='{html.escape(title)}'>")
    parts.append(_look_html(ev))
    parts.append("<h2>Worst queries</h2><p>Blue: query; green: relevant result; red: not relevant.</p>")
    for task in ev.suite.tasks:
        for config, r in ev.tasks.get(task.name, {}).items():
            thumbs = ev.thumbnails.get(config, {})
            for w in r.plots.get("worst", []):
                imgs = [f"<img class='q' src='{thumbs.get(w['query'], '')}' alt='query {html.escape(w['query'])}' title='query {html.escape(w['query'])}'>"]
                imgs += [f"<img class='{'ok' if rel else 'bad'}' src='{thumbs.get(item, '')}' alt='{html.escape(item)}' title='{html.escape(item)}'>"
                         for item, rel in zip(w["results"], w["relevant"])]
                parts.append(f"<div>{html.escape(task.name)} · {html.escape(config)} · AP {_fmt(w['ap'])}</div><div class='gallery'>{''.join(imgs)}</div>")
    parts.append("<h2>Embedding map</h2><p>t-SNE of a sample; hover a point to see the product.</p>")
    for config, points in ev.maps.items():
        parts.append(f"<h3>{html.escape(config)}</h3>{_svg_map(points, ev.thumbnails.get(config, {}))}")
    parts.append("<h2>Notes</h2><ul>")
    for config, sets in ev.datasets.items():
        for name, info in sets.items():
            skipped = "".join(f"<li>{html.escape(s['item'])}: {html.escape(s['reason'])}</li>" for s in info["skipped"][:50])
            parts.append(f"<li>{html.escape(config)} / {html.escape(name)}: {info['items']} items, {len(info['skipped'])} skipped<ul>{skipped}</ul></li>")
    for task in ev.suite.tasks:
        for config, r in ev.tasks.get(task.name, {}).items():
            parts += [f"<li>{html.escape(task.name)} ({html.escape(config)}): {html.escape(n)}</li>" for n in r.notes]
    parts.append(f"</ul><div id='tip'></div><script>{_MAP_JS}</script></body></html>")
    return "\n".join(parts)


def write_report(ev: Evaluation, out: Path) -> dict[str, Path]:
    """Write results.json, report.md, report.html and plots/ into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(ev, out)
    paths = {"json": out / "results.json", "markdown": out / "report.md", "html": out / "report.html"}
    paths["json"].write_text(json.dumps(ev.to_json(), indent=2, default=float, allow_nan=True))
    paths["markdown"].write_text(_markdown(ev, plots), encoding="utf-8")
    paths["html"].write_text(_html(ev, plots), encoding="utf-8")
    return paths
