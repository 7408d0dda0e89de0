"""``lm-eval-calib``: small helpers around ``lm_eval`` (the evaluation itself is lm_eval's own CLI)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from lm_eval_calib.bundled_models import BUNDLED_MODELS


def _model_args(args: argparse.Namespace) -> int:
    from lm_eval_calib.bundled_models import get_bundled_model

    print(get_bundled_model(args.name).model_args())
    return 0


def _tasks_dir(_args: argparse.Namespace) -> int:
    from lm_eval_calib.task_folder import task_dir

    print(task_dir())
    return 0


def _tasks(args: argparse.Namespace) -> int:
    from lm_eval.tasks import TaskManager

    from lm_eval_calib.harness import wrap_rules as wrap
    from lm_eval_calib.task_folder import task_dir

    manager = TaskManager(include_path=args.include_path)
    if not args.wrappable:
        ours = task_dir().resolve()
        own = [
            name
            for name, entry in manager.task_index.items()
            if entry.yaml_path is not None and Path(entry.yaml_path).resolve().is_relative_to(ours)
        ]
        print(wrap.NAMING + "\n\nlm-eval-calib's own tasks:")
        print("\n".join(f"  {name}" for name in sorted(own)))
        return 0
    rows = wrap.wrappable(manager, args.pattern)
    print(f"# {len(rows)} calib_<x> name(s) that can be wrapped (see `lm-eval-calib tasks`)", file=sys.stderr)
    width = max((len(name) for name, _, _ in rows), default=0)
    for name, kind, output_type in rows:
        print(f"{name:<{width}}  {kind:<5}  {output_type}")
    return 0 if rows else 1


def metrics_markdown() -> str:
    """The README's metric table, generated from the metric registry so docs never drift from code."""
    from lm_eval_calib.metrics import METRICS

    lines = ["| result key | name | better | range | what it measures |", "|---|---|---|---|---|"]
    for info in METRICS.values():
        low, high = info.range
        better = "higher" if info.higher_is_better else "lower"
        meaning = info.description.replace("|", "\\|")  # a literal | would split the Markdown cell
        lines.append(f"| `{info.key}` | {info.display_name} | {better} | [{low:g}, {high:g}] | {meaning} |")
    return "\n".join(lines)


def _metrics(_args: argparse.Namespace) -> int:
    print(metrics_markdown())
    return 0


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lm_eval_calib.report.build import build_report
    from lm_eval_calib.report.labels import LabelError
    from lm_eval_calib.report.runs import ReportInputError

    try:
        build_report(
            [Path(p) for p in args.run_dirs],
            Path(args.out),
            labels=args.label,
            n_folds=args.folds,
            seed=args.seed,
            held_out=[Path(p) for p in args.held_out],
            log=(lambda message: None) if args.quiet else print,
        )
    except (ReportInputError, LabelError) as exc:
        print(f"lm-eval-calib: error: {exc}", file=sys.stderr)
        return 2
    print(f"report written to {args.out} (open {Path(args.out) / 'index.html'})")
    return 0


def _study(args: argparse.Namespace) -> int:
    from lm_eval_calib.study.checks import check_study
    from lm_eval_calib.study.config import StudyConfigError, load_study
    from lm_eval_calib.study.plan import build_plan, describe, select_cells
    from lm_eval_calib.study.runner import run_study

    try:
        config = load_study(args.study)
        check_study(config)  # tasks, backends, files: everything that would fail after the first cell
        if not args.dry_run:
            return run_study(config, only=args.only)  # an --only matching nothing: refused before any cell
        cells = select_cells(build_plan(config), args.only)
    except StudyConfigError as exc:
        print(f"lm-eval-calib: error: {exc}", file=sys.stderr)
        return 2
    print(describe(cells))
    if args.commands:
        for cell in cells:
            print(f"\n# {cell.name}\n" + " ".join(cell.command))
    return 0


# -- help as plain text --------------------------------------------------------------------------------------
_ROLE = re.compile(r":[a-z]+:`(~?)([^`]+)`")
_TRAILING_DEFAULT = re.compile(r"\s*\(default: [^()]*\)\s*$")


def plain_text(text: str) -> str:
    """``text`` without reStructuredText markup: module docstrings serve as descriptions, and ``x`` or
    :mod:`x` read as noise in a terminal."""
    text = _ROLE.sub(lambda m: m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2), text)
    return text.replace("``", "")


def one_default(text: str) -> str:
    """A help text that states its default in its own words keeps those and loses a generated second
    ``(default: ...)`` at its end."""
    return _TRAILING_DEFAULT.sub("", text) if text.count("(default") > 1 else text


class PlainHelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, for help built from docstrings and generated flag texts (see :func:`plain_text`
    and :func:`one_default`)."""

    def _format_text(self, text: str) -> str:
        return super()._format_text(plain_text(text))

    def _expand_help(self, action: argparse.Action) -> str:
        return one_default(plain_text(super()._expand_help(action)))


def _all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _all_parsers(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lm-eval-calib", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    model_args = commands.add_parser(
        "model-args", help="print lm_eval --model_args for a model installed from the package registry"
    )
    model_args.add_argument("name", choices=list(BUNDLED_MODELS))
    model_args.set_defaults(run=_model_args)
    tasks_dir = commands.add_parser(
        "tasks-dir", help="print the task folder, for `lm_eval --include_path` when the start-up hook is off"
    )
    tasks_dir.set_defaults(run=_tasks_dir)
    tasks = commands.add_parser(
        "tasks",
        help="explain task names (calib_<task> wraps any lm-eval multiple-choice task) and list our own "
        "tasks; --wrappable lists every calib_<task> that can be built",
    )
    tasks.add_argument("pattern", nargs="?", help="with --wrappable: only names matching this glob ('mmlu*')")
    tasks.add_argument("--wrappable", action="store_true", help="list calib_<x> for each x that can be built")
    tasks.add_argument("--include_path", help="a folder of your own task YAMLs, as for lm_eval")
    tasks.set_defaults(run=_tasks)
    metrics = commands.add_parser("metrics", help="print the metric table (key, direction, range, meaning)")
    metrics.set_defaults(run=_metrics)
    report = commands.add_parser(
        "report",
        help="leaderboard, reliability diagrams, held-out recalibration and breakdowns (Markdown, CSV, HTML) "
        "from lm_eval output folders",
    )
    report.add_argument("run_dirs", nargs="+", help="lm_eval --output_path folders (run with --log_samples)")
    report.add_argument("--out", required=True, help="report folder (new, empty, or an earlier report)")
    report.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="RUN_DIR=NAME",
        help="name the model(s) of RUN_DIR in tables and figures (repeatable)",
    )
    report.add_argument(
        "--held-out",
        action="append",
        default=[],
        metavar="RUN_DIR",
        help="a run used only to fit recalibration maps and conformal thresholds, never scored: "
        "calib_mmlu_val for calib_mmlu, another run of the same task otherwise (repeatable)",
    )
    report.add_argument("--folds", type=int, default=5, help="folds of cross-fitted recalibration (5)")
    report.add_argument("--seed", type=int, default=0, help="seed of the cross-fitting folds (0)")
    report.add_argument("--quiet", action="store_true", help="print only errors and the final line")
    report.set_defaults(run=_report)
    study = commands.add_parser(
        "study", help="run a study file: train stages, evaluate every model on every task, report, findings"
    )
    study.add_argument("study", help="the study YAML (see examples/offline_mini.yaml)")
    study.add_argument(
        "--dry-run", action="store_true", help="list the cells and which are done; run nothing"
    )
    study.add_argument(
        "--commands", action="store_true", help="with --dry-run: also print each cell's command"
    )
    study.add_argument(
        "--only",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="run only the cells whose name matches a shell pattern (e.g. 'eval/*/calib_mmlu' 'train/*'): "
        "a long study in steps; the report and findings still cover every cell done",
    )
    study.set_defaults(run=_study)
    # the training add-on (train/lm_eval_calib_train); its flags come from light dataclasses, no torch here
    from lm_eval_calib_train.cli import add_train_parser

    add_train_parser(commands)
    for each in _all_parsers(parser):  # the train add-on's parsers too
        each.formatter_class = PlainHelpFormatter
    return parser


def _reader_gone() -> int:
    """Stop quietly when the reader of our output has gone (``lm-eval-calib tasks --wrappable | head``):
    what is still buffered goes to /dev/null, so the interpreter's last flush raises nothing either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.run(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's flush at exit
        return status
    except BrokenPipeError:
        return _reader_gone()
    except (FileNotFoundError, KeyError) as exc:
        print(f"lm-eval-calib: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
