"""P3 benchmark: calib_clm scoring speed against the limit, a plain batched forward over the same tokens.

Scores the first ``--docs`` WikiText-2 test documents with lm-eval's rolling windows (``--max-length``
tokens each) through ``hf`` (lm-eval's own), ``hf-calib`` (which also computes the per-token statistics),
and a plain ``model(input_ids)`` forward over exactly the same windows in batches of the same size (no
log-softmax, no statistics: the most any scorer could do with this model on this machine). Real
SmolLM2-135M-Instruct, float32, CPU; model loading is not timed. Run by hand::

    python bench/bench_clm_throughput.py --docs 4 --max-length 2048 --batch-size 4
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--data-dir", default=os.environ.get("LM_EVAL_CALIB_DATA", "../shared/data"))
    args = parser.parse_args()

    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    from lm_eval_calib.bundled_models import get_bundled_model
    from lm_eval_calib.data.wikitext import load_wikitext
    from lm_eval_calib.models.hf_calib import HFCalibLM

    torch.set_grad_enabled(False)
    model_args = dict(part.split("=", 1) for part in get_bundled_model("smollm2").model_args().split(","))
    common = dict(
        **model_args, dtype="float32", device="cpu", batch_size=args.batch_size, max_length=args.max_length
    )
    hf = HFLM(**common)
    calib = HFCalibLM(**common)

    pages = load_wikitext(args.data_dir)["test"]["page"][: args.docs]
    requests = [
        Instance(request_type="loglikelihood_rolling", doc={}, arguments=(page,), idx=i)
        for i, page in enumerate(pages)
    ]
    windows = []
    for page in pages:
        tokens = hf.tok_encode(page)
        for context, target in map(
            make_disjoint_window,
            get_rolling_token_windows(tokens, hf.prefix_token_id, args.max_length, context_len=1),
        ):
            windows.append((context + target)[-(args.max_length + 1) :][:-1])
    n_tokens = sum(len(hf.tok_encode(page)) for page in pages)

    def plain_forward() -> None:
        for start in range(0, len(windows), args.batch_size):
            batch = windows[start : start + args.batch_size]
            width = max(map(len, batch))
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            for row, window in enumerate(batch):
                ids[row, : len(window)] = torch.tensor(window)
            hf.model(ids)

    timings = {}
    for name, run in (
        ("plain forward (limit)", plain_forward),
        ("hf", lambda: hf.loglikelihood_rolling(requests, disable_tqdm=True)),
        ("hf-calib", lambda: calib.loglikelihood_rolling(requests, disable_tqdm=True)),
    ):
        start = time.perf_counter()
        run()
        timings[name] = time.perf_counter() - start
    limit = n_tokens / timings["plain forward (limit)"]
    print(
        f"{args.docs} documents, {n_tokens:,} tokens, {len(windows)} windows of <= {args.max_length} "
        f"tokens, batch {args.batch_size}"
    )
    print("| scorer | seconds | tokens/s | share of the limit |")
    print("|---|---:|---:|---:|")
    for name, seconds in timings.items():
        rate = n_tokens / seconds
        print(f"| {name} | {seconds:.1f} | {rate:,.0f} | {rate / limit:.0%} |")


if __name__ == "__main__":
    main()
