"""The report's ``index.html``: one static page, opened from disk.

No server, no network, no scripts: CSS is inline, fonts are the system's, and every image is a relative
path into ``figures/`` next to the page, so the folder can be zipped, mailed or served as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from urllib.parse import quote

from lm_eval_calib.report import leaderboard
from lm_eval_calib.report.leaderboard import fmt

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem auto; max-width: 110rem;
       padding: 0 1rem; color: #222; line-height: 1.4; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.05rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.45rem; text-align: right; white-space: nowrap; }
th { background: #f2f2f2; } td.text, th.text { text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; }
.figures { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; display: inline-block; }
figcaption { font-size: 0.8rem; color: #555; text-align: center; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.messages li { font-family: ui-monospace, monospace; font-size: 0.8rem; }
.note { color: #555; font-size: 0.85rem; }
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


def render(page: PageContent) -> str:
    """The whole page as one string."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(page.title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(page.title)}</h1>",
        f'<p class="note">Made by <code>lm-eval-calib report</code> on {escape(page.created)} from: '
        + ", ".join(f"<code>{escape(i)}</code>" for i in page.inputs)
        + "</p>",
    ]
    with_stage = leaderboard.has_stages(page.leaderboard)
    groups = list(dict.fromkeys(row["task"] for row in page.leaderboard))
    parts.append("<h2>Leaderboard</h2>")
    parts += [f'<p class="note">{escape(note)}</p>' for note in page.notes]
    header = leaderboard.markdown_header(page.leaderboard)
    drop = header.index("task")  # each table is one task's section, so the column would only repeat it
    header = header[:drop] + header[drop + 1 :]
    n_text = 2 if with_stage else 1
    for group in groups:
        rows = [leaderboard.markdown_cells(r, with_stage) for r in page.leaderboard if r["task"] == group]
        rows = [cells[:drop] + cells[drop + 1 :] for cells in rows]
        anchor = "task-" + "".join(c if c.isalnum() or c in "_-" else "-" for c in group)
        parts.append(f'<h3 id="{escape(anchor, quote=True)}">{escape(group)}</h3>')
        parts.append(_table(header, rows, n_text))
        if group in page.overlays:
            parts.append(
                f"<figure>{_img(page.overlays[group], f'reliability overlay, {group}', 600)}"
                f"<figcaption>All models on {escape(group)}</figcaption></figure>"
            )
    if page.recalibration:
        parts.append("<h2>Recalibration</h2>")
        parts.append(
            '<p class="note">Fitted on held-out items only (the validation split, or the other folds of a '
            "cross-fit); before and after are the same scored items. For Platt scaling NLL is the top-label "
            "(binary) log loss of correctness and Brier the top-label Brier.</p>"
        )
        head = [
            "model",
            "task",
            "method",
            "fitted on",
            "n scored",
            "parameters",
            "ECE before",
            "ECE after",
            "NLL before",
            "NLL after",
            "Brier before",
            "Brier after",
        ]
        rows = [
            [
                r["model"],
                r["task"],
                r["method"],
                r["fitted_on"],
                str(r["n_scored"]),
                r["parameters"],
                fmt(r["ece_before"]),
                fmt(r["ece_after"]),
                fmt(r["nll_before"]),
                fmt(r["nll_after"]),
                fmt(r["brier_before"]),
                fmt(r["brier_after"]),
            ]
            for r in page.recalibration
        ]
        parts.append(_table(head, rows, 6))
    if page.diagrams:
        parts.append("<h2>Reliability diagrams</h2>")
        for group in dict.fromkeys(d.group for d in page.diagrams):
            parts.append(f'<h3>{escape(group)}</h3><div class="figures">')
            for diagram in (d for d in page.diagrams if d.group == group):
                for scheme, path in diagram.images.items():
                    caption = f"{diagram.label} · {group} · equal-{scheme} bins"
                    parts.append(
                        f"<figure>{_img(path, caption, 500)}<figcaption>{escape(caption)}"
                        "</figcaption></figure>"
                    )
            parts.append("</div>")
    if page.breakdowns:
        parts.append("<h2>Per-category breakdown</h2>")
        parts.append(
            '<p class="note">Computed from the logged records with the metric core; ECE of a '
            "category with few items is biased upward and noisy.</p>"
        )
        head = ["category", "n", "Accuracy", "mean confidence", "ECE", "Brier", "NLL"]
        for group, label, rows in page.breakdowns:
            body = [
                [
                    r["category"],
                    str(r["n"]),
                    fmt(r["acc"]),
                    fmt(r["confidence"]),
                    fmt(r["ece"]),
                    fmt(r["brier"]),
                    fmt(r["nll"]),
                ]
                for r in rows
            ]
            parts.append(
                f"<details><summary>{escape(group)} · {escape(label)} ({len(rows)} categories)"
                f"</summary>{_table(head, body, 1)}</details>"
            )
    if page.messages:
        parts.append('<h2>Messages</h2><ul class="messages">')
        parts += [f"<li>{escape(m)}</li>" for m in page.messages]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
