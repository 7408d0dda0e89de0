"""GPU benchmark: full MMLU 5-shot (calib_mmlu, 14,042 questions) on a 1B-parameter Llama-shaped model.

Scores the SAME lm-eval requests (built by the real ``calib_mmlu`` task) three ways on one GPU and prints
tokens/s and MFU (model FLOPs utilisation: 2 x parameters x tokens / seconds / peak bf16 FLOP/s):

- the limit: a plain batched ``model(input_ids)`` forward over each question's longest request, nothing else;
- ``hf-calib`` (this project's fastest torch path: one forward per question, options read from it);
- lm-eval's own ``hf`` (its one-token logits cache shares a question's prompt across the four letters).

The model has random weights (no network on the GPU machine) and SmolLM2's tokenizer, so the token counts are
those of a real small model; what is measured is throughput, not accuracy. Needs torch, transformers and
lm-eval (carried as wheels where it is not installed); no vLLM. Prepare here, run there::

    python bench/gpu_mmlu_throughput.py --prepare .gpu_bundle           # tokenizer + MMLU CSVs, ~10 MB
    python bench/gpu_mmlu_throughput.py --bundle .gpu_bundle --batch-size 64  # on the GPU, < 8 minutes

``--tiny --limit 8 --device cpu`` smoke-tests the script on a CPU with a 2-layer model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout, where the package is not installed (GPU machine)
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, SXM


def prepare(bundle: Path, data_root: Path) -> None:
    """Copy what the GPU machine lacks (tokenizer, MMLU test + dev CSVs) into ``bundle``."""
    from transformers import AutoTokenizer

    from lm_eval_calib.bundled_models import get_bundled_model

    smol = get_bundled_model("smollm2")
    AutoTokenizer.from_pretrained(str(smol.folder()), gguf_file=smol.gguf_file).save_pretrained(
        bundle / "tokenizer"
    )
    for split in ("test", "dev", "val"):
        shutil.copytree(data_root / "mmlu" / split, bundle / "data" / "mmlu" / split, dirs_exist_ok=True)
    print(f"bundle written to {bundle}")


def build_model(vocab: int, tiny: bool, device: str, dtype):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    if not tiny:  # TinyLlama-like: 18 layers of width 2048, about 1.0B parameters with tied embeddings
        size = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=18, num_attention_heads=32)
    config = LlamaConfig(
        vocab_size=vocab,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        **size,
    )
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


def build_requests(data_dir: Path, limit: int | None, num_fewshot: int):
    from lm_eval.tasks import TaskManager, get_task_dict

    from lm_eval_calib.task_folder import task_dir

    manager = TaskManager(include_path=str(task_dir()), metadata={"data_dir": str(data_dir)})
    task = get_task_dict(["calib_mmlu"], manager)["calib_mmlu"]
    task.set_config(key="num_fewshot", value=num_fewshot)
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    return task.instances


def time_limit(model, tokenizer, requests, batch_size: int, device: str) -> tuple[float, int]:
    """The plain forward over each question's longest request (context + continuation), batched by length."""
    import torch

    longest: dict[int, list[int]] = {}
    for request in requests:
        context, continuation = request.args
        ids = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
        if len(ids) > len(longest.get(request.doc_id, [])):
            longest[request.doc_id] = ids
    rows = sorted(longest.values(), key=len, reverse=True)
    tokens = sum(map(len, rows))
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            batch = rows[i : i + batch_size]
            ids = torch.full((len(batch), len(batch[0])), tokenizer.pad_token_id or 0, device=device)
            mask = torch.zeros_like(ids)
            for j, row in enumerate(batch):
                ids[j, : len(row)] = torch.tensor(row, device=device)
                mask[j, : len(row)] = 1
            model(input_ids=ids, attention_mask=mask, use_cache=False)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", type=Path, help="write the bundle for the GPU machine here and stop")
    parser.add_argument(
        "--data-root",
        type=Path,
        default=Path(os.environ.get("LM_EVAL_CALIB_DATA", REPO.parent / "shared" / "data")),
    )
    parser.add_argument("--bundle", type=Path, default=REPO / ".gpu_bundle")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit", type=int, default=None, help="questions (default: all 14,042)")
    parser.add_argument("--num-fewshot", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="2-layer model: a CPU smoke test of the script")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare, args.data_root)
        return

    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    from lm_eval_calib.models.hf_calib import HFCalibLM

    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(str(args.bundle / "tokenizer"))
    model = build_model(len(tokenizer), args.tiny, args.device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    requests = build_requests(args.bundle / "data", args.limit, args.num_fewshot)
    print(f"{len(requests)} requests ({len(requests) // 4} questions) in {time.perf_counter() - start:.0f} s")

    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    rows = []
    seconds, tokens = time_limit(model, tokenizer, requests, args.batch_size, args.device)  # warms up too
    seconds, tokens = time_limit(model, tokenizer, requests, args.batch_size, args.device)
    rows.append(("plain forward (limit)", seconds))
    for label, cls in (("hf-calib", HFCalibLM), ("lm-eval hf", HFLM)):
        lm = cls(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, device=args.device)
        start = time.perf_counter()
        lm.loglikelihood(requests, disable_tqdm=True)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        rows.append((label, time.perf_counter() - start))

    print(
        f"\n{name}, {n_params / 1e9:.2f}B parameters ({dtype}), {len(requests) // 4} questions, "
        f"{args.num_fewshot}-shot, {tokens:,} prompt tokens (one sequence per question), "
        f"batch {args.batch_size}\n"
    )
    print("| scorer | seconds | prompt tokens/s | speed vs the limit | MFU |")
    print("|---|---:|---:|---:|---:|")
    results = []
    for label, secs in rows:
        mfu = 2 * n_params * tokens / secs / (peak * 1e12) if peak else float("nan")
        share = rows[0][1] / secs
        print(f"| {label} | {secs:.1f} | {tokens / secs:,.0f} | {share:.0%} | {mfu:.1%} |")
        results.append({"scorer": label, "seconds": secs, "tokens": tokens, "mfu": mfu})
    if args.json:
        args.json.write_text(json.dumps({"device": name, "parameters": n_params, "rows": results}, indent=2))


if __name__ == "__main__":
    main()
