# Sourced by .ci/run, .ci/run_vllm and .ci/run_train_ppo: a test environment is rebuilt only when what defines
# it changed. Its stamp is the SHA-256 of the files that decide what is installed (pyproject.toml, the script
# that builds it, this file) and the Python version. An environment with the same stamp is reused, with only
# this package reinstalled from the working tree (its code changes with every commit; its dependencies do not
# unless pyproject.toml does). A clean checkout (CI) has no environment, so it always builds one.
# LM_EVAL_CALIB_FRESH_ENV=1 forces a rebuild.

env_stamp() {  # env_stamp SCRIPT
  { cat pyproject.toml "$1" .ci/env_reuse.sh; python3 --version; } | sha256sum | cut -d' ' -f1
}

reuse_env() {  # reuse_env VENV SCRIPT: succeeds (the package refreshed) when VENV was built from the same files
  local venv=$1 script=$2
  if [ "${LM_EVAL_CALIB_FRESH_ENV:-0}" = 1 ] || [ ! -f "$venv/.env-stamp" ] || [ ! -x "$venv/bin/pip" ]; then
    return 1
  fi
  if [ "$(cat "$venv/.env-stamp")" != "$(env_stamp "$script")" ]; then
    return 1
  fi
  echo "reusing $venv: built from the same pyproject.toml and $script (LM_EVAL_CALIB_FRESH_ENV=1 rebuilds it)"
  "$venv/bin/pip" install -q --no-deps --force-reinstall .
}

mark_env() {  # mark_env VENV SCRIPT: record what VENV was built from, after a complete build only
  env_stamp "$2" >"$1/.env-stamp"
}
