#!/usr/bin/env bash
# The training stages of Zhu et al. (2023) in miniature, each checkpoint evaluated on calib_mmlu:
# base -> SFT (full and LoRA, Alpaca) -> reward model (HH-RLHF) -> PPO (from the full SFT checkpoint).
#
#   bash bench/train_stages_demo.sh [--model smollm2|gemma3] [--sft-steps N] [--rm-steps N] [--ppo-steps N]
#                                   [--every K] [--out DIR]
#
#   --model      a model installed from the package registry (default smollm2; gemma3 is Gemma 3 270M base),
#                or a model folder
#   --sft-steps  SFT steps of 4 examples (default 60); --rm-steps reward steps of 2 pairs (default 40);
#   --ppo-steps  PPO steps of 4 rollouts, one PPO epoch each (default 10)
#   --every K    evaluate every K-th of the 14,042 pooled MMLU test questions, 0-shot (default 100: 141
#                questions over all 57 subjects)
#   --out DIR    checkpoints in DIR/checkpoints, lm_eval runs in DIR/evals, the report in DIR/report
#                (default runs/train-demo-<model>)
#
# Re-running skips finished stages and evaluations and resumes an interrupted one. Offline, export
# LM_EVAL_CALIB_DATA=ROOT (the data root, laid out like ../shared/data) first; it is also where the training
# data are read from. With a virtual environment that is not activated, set VENV=path/to/venv; DEVICE=cuda
# for a GPU. On two CPU cores the defaults take about 45 minutes for SmolLM2 (measured per step: SFT 3.5 s,
# reward 15-25 s, PPO 70-100 s; each evaluation about 2 minutes; DIR/timings.txt has this run's times);
# Gemma 3 270M (twice the weights, five times the vocabulary) takes two to three times as long.
set -euo pipefail

model=smollm2
sft_steps=60
rm_steps=40
ppo_steps=10
every=100
out=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --sft-steps) sft_steps="$2"; shift 2 ;;
    --rm-steps) rm_steps="$2"; shift 2 ;;
    --ppo-steps) ppo_steps="$2"; shift 2 ;;
    --every) every="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
out="${out:-runs/train-demo-$(basename "$model")}"
data="${LM_EVAL_CALIB_DATA:?export LM_EVAL_CALIB_DATA=ROOT (the local data root) first}"
bin="${VENV:+$VENV/bin/}"
device="${DEVICE:-cpu}"
mkdir -p "$out/checkpoints" "$out/evals"
timings="$out/timings.txt"

alpaca="$data/alpaca/alpaca_data_1k.json"
hh="$data/hh_rlhf/harmless-base/test.jsonl.gz"
ckpt="$out/checkpoints"

stage() {  # stage NAME ARGS...: train unless finished; log the wall time
  local name="$1"; shift
  if [[ -f "$ckpt/$name/lm_eval_calib_manifest.json" ]]; then
    echo "== $name: done"; return
  fi
  echo "== $name"
  local start=$SECONDS
  "${bin}lm-eval-calib" train "$@" --output "$ckpt/$name" --resume
  echo "train $name $((SECONDS - start)) s" >> "$timings"
}

stage sft-full sft --model "$model" --data "$alpaca" --method full --max-steps "$sft_steps" --batch-size 4 \
  --max-length 256 --learning-rate 2e-5
stage sft-lora sft --model "$model" --data "$alpaca" --method lora --max-steps "$sft_steps" --batch-size 4 \
  --max-length 256 --learning-rate 2e-4
stage rm reward --model "$ckpt/sft-full" --data "$hh" --max-steps "$rm_steps" --batch-size 2 \
  --max-length 192 --eval-rows 200 --learning-rate 1e-5
stage ppo ppo --policy "$ckpt/sft-full" --reward-model "$ckpt/rm" --data "$hh" --max-steps "$ppo_steps" \
  --batch-size 4 --response-length 32 --max-prompt-length 128 --num-ppo-epochs 1 --learning-rate 1e-5

samples=$("${bin}python" -c "import json; print(json.dumps({'calib_mmlu': list(range(0, 14042, $every))}))")
if [[ -d "$model" ]]; then
  base_args="pretrained=$model"
else
  base_args=$("${bin}lm-eval-calib" model-args "$model")
fi
evaluate() {  # evaluate NAME MODEL_ARGS
  local name="$1" args="$2"
  if compgen -G "$out/evals/$name/*/results_*.json" > /dev/null; then
    echo "== eval $name: done"; return
  fi
  echo "== eval $name"
  local start=$SECONDS
  "${bin}lm_eval" --model hf --model_args "$args,dtype=float32" --tasks calib_mmlu --num_fewshot 0 \
    --samples "$samples" --device "$device" --batch_size 8 --output_path "$out/evals/$name" --log_samples
  echo "eval $name $((SECONDS - start)) s" >> "$timings"
}
evaluate base "$base_args"
for name in sft-full sft-lora rm ppo; do
  evaluate "$name" "pretrained=$ckpt/$name"
done

"${bin}lm-eval-calib" report "$out"/evals/* --out "$out/report"
"${bin}python" - "$out" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
print(f"\n| stage | checkpoint label | acc | ECE | Brier | NLL |\n|---|---|---|---|---|---|")
for name in ("base", "sft-full", "sft-lora", "rm", "ppo"):
    results = sorted((out / "evals" / name).rglob("results_*.json"))
    if not results:
        continue
    r = json.loads(results[-1].read_text())["results"]["calib_mmlu"]
    manifest = out / "checkpoints" / name / "lm_eval_calib_manifest.json"
    label = json.loads(manifest.read_text())["label"] if manifest.is_file() else "(base model)"
    print(f"| {name} | {label} | {r['acc,none']:.3f} | {r['ece,none']:.3f} | {r['brier,none']:.3f} "
          f"| {r['nll,none']:.3f} |")
print()
print((out / "timings.txt").read_text())
EOF
