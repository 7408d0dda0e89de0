"""P8: the sampling estimators' K samples drawn at the engine (one request per prompt) vs K separate requests.

On the real gsm8k prompts (lm-eval's own task on the hub mirror of the data root, its default 5-shot prompt)
and ONE loaded model, times on the same documents:

- ``greedy``: the task's own greedy generation (``generate_until`` with the task's settings);
- ``separate``: K samples per prompt as K separate ``generate_until`` requests (what lm-eval's ``repeats``
  sends, and our fallback for models without engine sampling);
- ``engine``: K samples per prompt from ``generate_samples`` (``vllm-calib``: one request,
  ``SamplingParams(n=K, seed=...)``, the prompt prefilled once; ``hf-calib``: one ``generate`` call with
  ``num_return_sequences=K``).

Sampling is at temperature 1 with the task's stop sequences and ``--max-gen-toks``. Each timing is the median
of ``--repeats`` rounds after one warm-up round on two prompts; model loading is not timed; vLLM's prefix
cache is emptied before each timed run, so no run reads the prompts an earlier one computed. Prints a Markdown
table. Run by hand, one backend per call (vLLM needs its own environment, e.g. ``.ci/run_vllm``'s)::

    .venv-vllm/bin/python bench/bench_sampling.py --backend vllm-calib --limit 32 --samples 5
    .venv/bin/python bench/bench_sampling.py --backend hf-calib --limit 8 --samples 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench_mmlu_backends import export_model  # bench/ is on sys.path when a script here runs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default takes 14
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
VLLM_ARGS = {"dtype": "float32", "enforce_eager": True, "max_num_batched_tokens": 5376, "seed": 1234}


def gsm8k_instances(data_root: Path, limit: int, max_gen_toks: int) -> list:
    """The first ``limit`` gsm8k test requests lm-eval builds (its default few-shot prompt)."""
    import lm_eval
    from lm_eval.tasks import TaskManager, get_task_dict

    folder = Path(tempfile.mkdtemp(prefix="bench-sampling-"))
    source = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
    (folder / "bench_gsm8k.yaml").write_text(
        f"include: {source}\ntask: bench_gsm8k\ntag: []\n"
        f"dataset_path: {data_root / 'hub' / 'openai' / 'gsm8k'}\n"
    )
    task = get_task_dict(["bench_gsm8k"], TaskManager(include_path=str(folder)))["bench_gsm8k"]
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    for instance in task.instances:
        instance.arguments[1]["max_gen_toks"] = max_gen_toks
    return list(task.instances)


def make_model(backend: str, folder: Path, batch_size: int):
    if backend == "hf-calib":
        from lm_eval_calib.models.hf_calib import HFCalibLM

        return HFCalibLM(pretrained=str(folder), dtype="float32", device="cpu", batch_size=batch_size)
    if backend == "vllm-calib":
        from lm_eval_calib.models.vllm_calib import VLLMCalibLM

        return VLLMCalibLM(pretrained=str(folder), batch_size="auto", **VLLM_ARGS)
    raise ValueError(f"unknown backend {backend!r}: hf-calib or vllm-calib")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["vllm-calib", "hf-calib"], required=True)
    parser.add_argument("--model-dir", default=None, help="exported float32 SmolLM2 (default: a temp folder)")
    parser.add_argument(
        "--data-root", type=Path, default=Path(os.environ.get("LM_EVAL_CALIB_DATA", DEFAULT_DATA))
    )
    parser.add_argument("--limit", type=int, default=32, help="gsm8k prompts")
    parser.add_argument("--samples", type=int, default=5, help="K samples per prompt")
    parser.add_argument("--max-gen-toks", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8, help="hf-calib's batch size")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    from lm_eval.api.instance import Instance

    from lm_eval_calib.generation.estimators import doc_sample_seed
    from lm_eval_calib.generation.passes import sampling_kwargs

    scratch = tempfile.TemporaryDirectory()
    folder = export_model(Path(args.model_dir or Path(scratch.name) / "smollm2"))
    greedy = gsm8k_instances(args.data_root, args.limit, args.max_gen_toks)
    k = args.samples
    sampled = [Instance("generate_until", i.doc, (i.args[0], sampling_kwargs(i.args[1])), 0) for i in greedy]
    separate = [request for request in sampled for _ in range(k)]  # lm-eval's `[req] * req.repeats`
    seeds = [doc_sample_seed(1234, "bench_gsm8k", i) for i in range(len(sampled))]
    model = make_model(args.backend, folder, args.batch_size)
    prompt_tokens = sum(len(model.tok_encode(i.args[0])) for i in greedy) / len(greedy)

    runs = {
        "greedy": lambda reqs=greedy: model.generate_until(reqs, disable_tqdm=True),
        "separate": lambda reqs=separate: model.generate_until(reqs, disable_tqdm=True),
        "engine": lambda reqs=sampled: model.generate_samples(reqs, k, seeds),
    }
    model.generate_samples(sampled[:2], k, seeds[:2])  # warm-up
    model.generate_until(separate[: 2 * k], disable_tqdm=True)
    times: dict[str, list[float]] = {name: [] for name in runs}
    texts: dict[str, list] = {}
    engine = getattr(getattr(model, "engine", None), "llm", None)
    for _ in range(args.repeats):
        for name, fn in runs.items():
            if hasattr(engine, "reset_prefix_cache"):  # no run reads the prompts an earlier one left cached
                engine.reset_prefix_cache()
            start = time.perf_counter()
            texts[name] = fn()
            times[name].append(time.perf_counter() - start)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    distinct = sum(len(set(t)) for t in texts["engine"]) / len(texts["engine"])
    print(
        f"\n{args.backend}, SmolLM2-135M-Instruct float32 on CPU, {len(greedy)} gsm8k prompts (5-shot, "
        f"{prompt_tokens:.0f} prompt tokens on average), K = {k}, max_gen_toks {args.max_gen_toks}, "
        f"temperature 1, median of {args.repeats}; engine: {distinct:.2f} distinct of {k} per prompt\n"
    )
    print("| run | requests | seconds | / separate | / greedy |")
    print("|---|---|---|---|---|")
    n = len(greedy)
    requests = {"greedy": f"{n} greedy", "separate": f"{n * k} (K per prompt)", "engine": f"{n} (n = {k})"}
    for name in ("greedy", "separate", "engine"):
        s = seconds[name]
        ratios = f"{s / seconds['separate']:.2f} | {s / seconds['greedy']:.2f}"
        print(f"| {name} | {requests[name]} | {s:.2f} | {ratios} |")
    scratch.cleanup()


if __name__ == "__main__":
    main()
