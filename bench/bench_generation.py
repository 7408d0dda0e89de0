"""Cost of each generation-confidence estimator relative to generation alone, with ``hf-calib``.

Builds the real requests of a ``generate_until`` task (gsm8k from the hub mirror of the data root by default,
or any task lm-eval or this package knows), then on ONE loaded ``hf-calib`` model times, on the same
documents:

- ``generation alone``: ``hf``'s own ``generate_until`` (``HFLM.generate_until`` called on the hf-calib
  object, which bypasses the log-prob recording: exactly the unwrapped task's generation);
- ``generation + seqprob``: ``hf-calib``'s ``generate_until`` (log-probs recorded during generation; the
  issue's bound: at most +10%);
- every second-pass estimator (``ptrue``, ``verbal``, ``consistency`` with K samples) and ``seqprob`` by
  rescoring (what ``--model hf`` pays), each as the batch the task runs after generation.

Each timing is the median of ``--repeats`` alternating rounds; model loading is not timed. Prints a Markdown
table. Run by hand (the numbers in the README come from here)::

    python bench/bench_generation.py --limit 50 --max-gen-toks 128 --samples 5
    python bench/bench_generation.py --limit 3 --max-gen-toks 8 --repeats 1   # smoke
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def gsm8k_include(folder: Path, data_root: Path) -> str:
    """A YAML running lm-eval's own gsm8k on the offline hub mirror; returns its task name."""
    import lm_eval

    source = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
    (folder / "bench_gsm8k.yaml").write_text(
        f"include: {source}\ntask: bench_gsm8k\ntag: []\n"
        f"dataset_path: {data_root / 'hub' / 'openai' / 'gsm8k'}\n"
    )
    return "bench_gsm8k"


def build_instances(
    task_name: str, include: Path, limit: int, num_fewshot: int | None, chat, max_gen_toks: int
):
    from lm_eval.tasks import TaskManager, get_task_dict

    task = get_task_dict([task_name], TaskManager(include_path=str(include)))[task_name]
    if num_fewshot is not None:
        task.set_config(key="num_fewshot", value=num_fewshot)
    task.build_all_requests(limit=limit, apply_chat_template=chat is not None, chat_template=chat)
    for instance in task.instances:
        instance.arguments[1]["max_gen_toks"] = max_gen_toks
    return task, task.instances


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model-args", default=None, help="hf-calib --model_args (default: SmolLM2, float32)"
    )
    parser.add_argument("--task", default="gsm8k", help="gsm8k (hub mirror) or any generate_until task name")
    parser.add_argument(
        "--data-root", type=Path, default=Path(os.environ.get("LM_EVAL_CALIB_DATA", DEFAULT_DATA))
    )
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--num-fewshot", type=int, default=None)
    parser.add_argument("--max-gen-toks", type=int, default=128)
    parser.add_argument("--samples", type=int, default=5, help="K of the consistency estimator")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--apply-chat-template", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("LM_EVAL_CALIB_DATA", str(args.data_root))

    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import simple_parse_args_string

    from lm_eval_calib.bundled_models import get_bundled_model
    from lm_eval_calib.generation import passes
    from lm_eval_calib.models.hf_calib import HFCalibLM

    model_args = args.model_args or get_bundled_model("smollm2").model_args() + ",dtype=float32"
    lm = HFCalibLM(**simple_parse_args_string(model_args), batch_size=args.batch_size, device="cpu")
    chat = lm.apply_chat_template if args.apply_chat_template else None

    with tempfile.TemporaryDirectory() as tmp:
        name = gsm8k_include(Path(tmp), args.data_root) if args.task == "gsm8k" else args.task
        task, instances = build_instances(
            name, Path(tmp), args.limit, args.num_fewshot, chat, args.max_gen_toks
        )

    glue = passes.chat_glue(chat) if chat else None
    texts: list = []

    def generation_alone() -> None:
        HFLM.generate_until(lm, instances, disable_tqdm=True)

    def generation_with_logprobs() -> None:
        texts[:] = lm.generate_until(instances, disable_tqdm=True)

    def items(plain: bool) -> list:
        return [
            passes.Generation(i.doc_id, i.doc, i.args[0], dict(i.args[1]), str(t) if plain else t, name)
            for i, t in zip(instances, texts, strict=True)
        ]

    rows = {
        "generation alone (hf)": generation_alone,
        "generation + seqprob (hf-calib)": generation_with_logprobs,
        "seqprob by rescoring (hf)": lambda: passes.run_passes(lm, items(True), ["seqprob"], 2, glue),
        "ptrue": lambda: passes.run_passes(lm, items(False), ["ptrue"], 2, glue),
        "verbal": lambda: passes.run_passes(lm, items(False), ["verbal"], 2, glue),
        f"consistency (K={args.samples})": lambda: passes.run_passes(
            lm, items(False), ["consistency"], args.samples, glue
        ),
    }
    generation_with_logprobs()  # warm-up, and the texts the second passes judge
    times: dict[str, list[float]] = {row: [] for row in rows}
    for _ in range(args.repeats):
        for row, fn in rows.items():
            times[row].append(timed(fn))
    base = statistics.median(times["generation alone (hf)"])
    print(
        f"\n{name}: {len(instances)} documents, max_gen_toks={args.max_gen_toks}, batch {args.batch_size}, "
        f"chat template {'on' if chat else 'off'}, median of {args.repeats}\n"
    )
    print("| step | seconds | relative to generation alone |")
    print("|---|---:|---:|")
    for row, values in times.items():
        seconds = statistics.median(values)
        # generation rows as a ratio (the +10% bound reads off the second), second passes as an addition
        label = f"{seconds / base:.2f}x" if row.startswith("generation") else f"+{100 * seconds / base:.0f}%"
        print(f"| {row} | {seconds:.2f} | {label} |")


if __name__ == "__main__":
    main()
