"""The report's ``index.html``: one static page, opened from disk.

No server, no network, no scripts: CSS is inline, fonts are the system's, and every image is a relative
path into ``figures/`` next to the page, so the folder can be zipped, mailed or served as is.

Layout, so that one model's or one task's numbers are a click away: messages first (when there are any),
a table of contents with an anchor for every task section and every model in it, then one section per
task holding its leaderboard (the columns a reader compares first; the rest under "More columns"), its
overlay, its recalibrations (with the calibration / refinement split), its conformal answer sets and
selective-prediction numbers, each model's diagrams (reliability, and risk-coverage where the report drew
one) and the per-category breakdowns. Tables fit the page:
text cells wrap, and the wide material sits in collapsed ``<details>``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from urllib.parse import quote

from lm_eval_calib.report import leaderboard
from lm_eval_calib.report.leaderboard import fmt

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem auto; max-width: 80rem;
       padding: 0 1rem; color: #222; line-height: 1.4; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.05rem; margin-top: 1.5rem; } h4 { font-size: 0.95rem; margin: 1rem 0 0.3rem; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.45rem; text-align: right; white-space: nowrap; }
td.text, th.text { text-align: left; white-space: normal; overflow-wrap: anywhere; max-width: 18rem; }
th { background: #f2f2f2; white-space: normal; }
tbody tr:nth-child(even) { background: #fafafa; }
.figures { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0.5rem 0; display: inline-block; max-width: 100%; }
figcaption { font-size: 0.8rem; color: #555; text-align: center; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.messages { background: #fff8e1; border: 1px solid #e0c060; padding: 0.3rem 1rem; }
.messages li { font-family: ui-monospace, monospace; font-size: 0.8rem; }
nav.toc li { margin: 0.15rem 0; } nav.toc .models { font-size: 0.85rem; color: #555; }
.note { color: #555; font-size: 0.85rem; } .top { font-size: 0.8rem; }
details { margin: 0.3rem 0 1rem; } summary { cursor: pointer; color: #335; }
"""


@dataclass
class Diagram:
    label: str
    group: str
    images: dict[str, str]
    """scheme -> PNG path relative to the page."""


@dataclass
class PageContent:
    title: str
    created: str
    inputs: list[str]
    leaderboard: list[dict]
    recalibration: list[dict]
    overlays: dict[str, str]
    """task section -> overlay PNG path relative to the page."""
    diagrams: list[Diagram]
    breakdowns: list[tuple[str, str, list[dict]]]
    """(task section, model label, rows)."""
    messages: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    decomposition: list[dict] = field(default_factory=list)
    """Calibration / refinement rows (:func:`~lm_eval_calib.report.recalibrate.decomposition_rows`)."""
    conformal: list[dict] = field(default_factory=list)
    """Conformal-set rows (:func:`~lm_eval_calib.report.recalibrate.conformal_rows`)."""
    selective: list[dict] = field(default_factory=list)
    """Selective-prediction rows (:func:`~lm_eval_calib.report.recalibrate.selective_row`)."""


def anchor(*parts: str) -> str:
    """A stable HTML id from a task section (and a model label): ``task-calib_mmlu--SmolLM2-135M``."""
    return "--".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", part).strip("-") or "x" for part in ("task", *parts))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int) -> str:
    def cell(tag: str, i: int, value: str) -> str:
        css = ' class="text"' if i < text_columns else ""
        return f"<{tag}{css}>{escape(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "\n".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    table = f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def _img(path: str, alt: str, width: int) -> str:
    return (
        f'<img src="{escape(quote(path), quote=True)}" alt="{escape(alt, quote=True)}" width="{width}" '
        'loading="eager">'
    )


def _without(cells: list[str], index: int) -> list[str]:
    return cells[:index] + cells[index + 1 :]


def _leaderboard(rows: list[dict], table: list[dict]) -> list[str]:
    """One section's leaderboard: main columns, the rest collapsed (the task column would only repeat the
    section's title, so it is dropped). Columns follow the whole ``table`` (a stage column in every section
    when any row has a stage)."""
    with_stage = leaderboard.has_stages(table)
    n_text = 2 if with_stage else 1
    header = leaderboard.main_header(table)
    drop = header.index("task")
    main_body = [_without(leaderboard.main_cells(r, with_stage), drop) for r in rows]
    parts = [_table(_without(header, drop), main_body, n_text)]
    parts += [f'<p class="note">{escape(line)}</p>' for line in leaderboard.caveat_lines(rows)]
    header = leaderboard.details_header(table)
    body = [_without(leaderboard.details_cells(r, with_stage), drop) for r in rows]
    parts.append(
        "<details><summary>More columns: equal-mass ECE, MCE, smECE, NLL, recalibration "
        f"(all in leaderboard.csv)</summary>{_table(_without(header, drop), body, n_text + 0)}</details>"
    )
    return parts


def _recalibration(rows: list[dict]) -> list[str]:
    def after(r: dict, key: str) -> str:  # ± the bootstrap stderr over the scored documents
        return _with_stderr(r[f"{key}_after"], r.get(f"{key}_after_stderr"))

    main = [
        [r["model"], r["method"], r["fitted_on"], r["parameters"], fmt(r["ece_before"]), after(r, "ece")]
        for r in rows
    ]
    head = ["model", "method", "fitted on", "parameters", "ECE before", "ECE after"]
    more = [
        [
            r["model"],
            r["method"],
            str(r["n_scored"]),
            fmt(r["nll_before"]),
            after(r, "nll"),
            fmt(r["brier_before"]),
            after(r, "brier"),
        ]
        for r in rows
    ]
    more_head = ["model", "method", "n scored", "NLL before", "NLL after", "Brier before", "Brier after"]
    return [
        _table(head, main, 4),
        f"<details><summary>NLL and Brier before and after</summary>{_table(more_head, more, 2)}</details>",
    ]


def _with_stderr(value: object, stderr: object) -> str:
    text = fmt(value)
    return text + (f" ± {fmt(stderr)}" if isinstance(stderr, float) and stderr == stderr else "")


def _decomposition(rows: list[dict]) -> list[str]:
    body = [
        [
            r["model"],
            f"{r['loss']} ({r['kind']})",
            fmt(r["total"]),
            _with_stderr(r["calibration"], r["calibration_stderr"]),
            fmt(r["refinement"]),
            r["best_map"],
        ]
        for r in rows
    ]
    head = ["model", "loss", "total", "calibration", "refinement", "best map"]
    return [
        "<details><summary>Calibration and refinement: the part of Brier and NLL that recalibration "
        f"removes</summary>{_table(head, body, 2)}</details>"
    ]


def _conformal(rows: list[dict]) -> list[str]:
    body = [
        [
            r["model"],
            r["score"].upper(),
            r["fitted_on"],
            f"{r['target_coverage']:.2f}",
            _with_stderr(r["coverage"], r["coverage_stderr"]),
            _with_stderr(r["set_size"], r["set_size_stderr"]),
            f"{r['worst_category']} ({fmt(r['worst_category_coverage'])})" if r["worst_category"] else "–",
        ]
        for r in rows
    ]
    head = ["model", "score", "fitted on", "target", "coverage", "mean set size", "worst category"]
    return [
        "<h3>Conformal answer sets</h3>",
        '<p class="note">Options kept so that the gold answer is in the set for a share 1 - alpha of the '
        "documents (split conformal, never calibrated on the documents it covers); coverage holds on "
        "average, not per category.</p>",
        _table(head, body, 3),
    ]


def _selective(rows: list[dict]) -> list[str]:
    extra = [k for k in rows[0] if k.startswith("sel_acc@")]
    body = [
        [r["model"], _with_stderr(r["prr"], r["prr_stderr"]), fmt(r["aurc"]), *(fmt(r[k]) for k in extra)]
        for r in rows
    ]
    head = ["model", "PRR", "AURC", *(f"accuracy @ {k[8:]} coverage" for k in extra)]
    return [
        "<h3>Selective prediction</h3>",
        '<p class="note">PRR: the share of the oracle\'s gain over abstaining at random that ranking by '
        "confidence achieves (1 perfect, 0 random); accuracy @ c: of the most confident share c of the "
        "items. Risk-coverage curves beside each reliability diagram.</p>",
        _table(head, body, 1),
    ]


def render(page: PageContent) -> str:
    """The whole page as one string."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<title>{escape(page.title)}</title><style>{STYLE}</style></head><body id="top">',
        f"<h1>{escape(page.title)}</h1>",
        f'<p class="note">Made by <code>lm-eval-calib report</code> on {escape(page.created)} from: '
        + ", ".join(f"<code>{escape(i)}</code>" for i in page.inputs)
        + "</p>",
    ]
    if page.messages:
        parts.append(f'<section id="messages" class="messages"><h2>Messages ({len(page.messages)})</h2><ul>')
        parts += [f"<li>{escape(m)}</li>" for m in page.messages]
        parts.append("</ul></section>")
    groups = list(dict.fromkeys(row["task"] for row in page.leaderboard))
    models = {g: list(dict.fromkeys(r["model"] for r in page.leaderboard if r["task"] == g)) for g in groups}
    ids: dict[tuple[str, ...], str] = {}  # (task,) or (task, model) -> a unique id
    for key in [(g,) for g in groups] + [(g, m) for g in groups for m in models[g]]:
        candidate = anchor(*key)
        while candidate in ids.values():
            candidate += "-"
        ids[key] = candidate
    toc = ['<nav class="toc"><h2>Contents</h2><ul>']
    if page.messages:
        toc.append(f'<li><a href="#messages">Messages ({len(page.messages)})</a></li>')
    for group in groups:
        links = ", ".join(
            f'<a href="#{escape(ids[group, m], quote=True)}">{escape(m)}</a>' for m in models[group]
        )
        toc.append(
            f'<li><a href="#{escape(ids[(group,)], quote=True)}">{escape(group)}</a> '
            f'<span class="models">({len(models[group])} model{"s" if len(models[group]) != 1 else ""}: '
            f"{links})</span></li>"
        )
    toc.append('<li><a href="#reading">How to read the numbers</a></li></ul></nav>')
    parts += toc
    for group in groups:
        rows = [r for r in page.leaderboard if r["task"] == group]
        parts.append(f'<section id="{escape(ids[(group,)], quote=True)}"><h2>{escape(group)}</h2>')
        parts += _leaderboard(rows, page.leaderboard)
        if group in page.overlays:
            parts.append(
                f"<figure>{_img(page.overlays[group], f'reliability overlay, {group}', 1100)}"
                f"<figcaption>All models on {escape(group)}: smoothed reliability curves with 95% bootstrap "
                "bands (left), equal-width bins with 95% intervals (right)</figcaption></figure>"
            )
        recal = [r for r in page.recalibration if r["task"] == group]
        if recal:
            parts.append("<h3>Recalibration</h3>")
            parts += _recalibration(recal)
        decomposition = [r for r in page.decomposition if r["task"] == group]
        if decomposition:
            parts += _decomposition(decomposition)
        conformal = [r for r in page.conformal if r["task"] == group]
        if conformal:
            parts += _conformal(conformal)
        selective = [r for r in page.selective if r["task"] == group]
        if selective:
            parts += _selective(selective)
        diagrams = [d for d in page.diagrams if d.group == group]
        if diagrams:
            parts.append("<h3>Reliability diagrams</h3>")
        for diagram in diagrams:
            element = ids.get((group, diagram.label), anchor(group, diagram.label))
            parts.append(f'<div id="{escape(element, quote=True)}"><h4>{escape(diagram.label)}</h4>')
            parts.append('<div class="figures">')
            for scheme, path in diagram.images.items():
                kind = "risk-coverage with oracle and random" if scheme == "risk" else f"equal-{scheme} bins"
                caption = f"{diagram.label} · {group} · {kind}"
                parts.append(
                    f"<figure>{_img(path, caption, 500)}<figcaption>{escape(caption)}</figcaption></figure>"
                )
            parts.append("</div></div>")
        breakdowns = [(label, rows) for g, label, rows in page.breakdowns if g == group]
        if breakdowns:
            parts.append(
                '<h3>Per-category breakdown</h3><p class="note">Computed from the logged records with the '
                "metric core; ECE of a category with few items is biased upward and noisy.</p>"
            )
        head = ["category", "n", "Accuracy", "mean confidence", "ECE", "Brier", "NLL"]
        scores = ("acc", "confidence", "ece", "brier", "nll")
        for label, rows in breakdowns:
            body = [[r["category"], str(r["n"]), *(fmt(r[key]) for key in scores)] for r in rows]
            conformal = [s for s in ("lac", "aps") if rows and f"coverage_{s}" in rows[0]]
            for score in conformal:  # per-category conformal coverage; "!" = more than 2 stderrs below target
                for r, cells in zip(rows, body, strict=True):
                    flag = " !" if r[f"coverage_{score}_below"] else ""
                    cells += [
                        f"{fmt(r[f'coverage_{score}'])} ± {fmt(r[f'coverage_{score}_stderr'])}{flag}",
                        f"{fmt(r[f'set_size_{score}'])} ± {fmt(r[f'set_size_{score}_stderr'])}",
                    ]
            head_of_run = head + [f"{q} {s.upper()}" for s in conformal for q in ("coverage", "set size")]
            parts.append(
                f"<details><summary>{escape(label)} ({len(rows)} categories)</summary>"
                f"{_table(head_of_run, body, 1)}</details>"
            )
        parts.append('<p class="top"><a href="#top">↑ contents</a></p></section>')
    parts.append('<section id="reading"><h2>How to read the numbers</h2>')
    parts += [f'<p class="note">{escape(note)}</p>' for note in page.notes]
    if page.recalibration:
        parts.append(
            '<p class="note">Recalibration is fitted on held-out items only (the validation split, or the '
            "other folds of a cross-fit); before and after are the same scored items; \u00b1 after a value "
            "is its bootstrap stderr over the scored documents (a document's tokens resampled together), the "
            "fitted map held fixed. For the top-label "
            "methods (Platt scaling, isotonic regression, histogram binning) NLL is the binary log loss of "
            "correctness and Brier the top-label Brier. "
            "\u201cT at bound\u201d: the best temperature lies outside the range searched (relative to the "
            "spread of the log-likelihoods), so the map shown is the flattest or sharpest one tried.</p>"
        )
    parts.append("</section></body></html>")
    return "\n".join(parts) + "\n"
