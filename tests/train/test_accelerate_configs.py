"""The accelerate config files shipped for GPU set-ups (``train/configs/accelerate/``), read by accelerate
itself: its config-file parser, the checks and launcher environment of ``accelerate launch --config_file``,
and the DeepSpeed / FSDP plugin the trainer builds from that environment. Nothing here needs a GPU or
DeepSpeed installed; the GPU runs themselves are untested here (README, "On many GPUs")."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "train" / "configs" / "accelerate"
EXPECTED = {
    "multi_gpu.yaml": "MULTI_GPU",
    "deepspeed_zero2.yaml": "DEEPSPEED",
    "deepspeed_zero3.yaml": "DEEPSPEED",
    "fsdp.yaml": "FSDP",
}


def test_the_usual_gpu_set_ups_are_shipped():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


def _launcher_environment(path: Path) -> tuple[object, dict[str, str]]:
    """What ``accelerate launch --config_file PATH -m lm_eval_calib_train sft`` checks and hands to each
    process: accelerate's own launch validation (a private function of its CLI: the code path of the
    command itself) and launcher environment."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    command = ["--config_file", str(path), "-m", "lm_eval_calib_train", "sft"]
    args = launch_command_parser().parse_args(command)
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return args, env


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_parses_the_config_and_builds_its_launch(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    config = load_config_from_file(str(CONFIGS / name))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type.value == EXPECTED[name]
    assert config.num_processes >= 2 and not config.use_cpu
    # the stages' default --precision auto trains in bf16 on a GPU that has it; DeepSpeed refuses a mismatch
    assert config.mixed_precision == "bf16"
    args, env = _launcher_environment(CONFIGS / name)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert (args.multi_gpu, args.use_deepspeed, args.use_fsdp) == (
        EXPECTED[name] == "MULTI_GPU",
        EXPECTED[name] == "DEEPSPEED",
        EXPECTED[name] == "FSDP",
    )


@pytest.mark.parametrize(("name", "stage"), [("deepspeed_zero2.yaml", 2), ("deepspeed_zero3.yaml", 3)])
def test_deepspeed_configs_build_the_plugin_the_trainer_uses(name, stage):
    from accelerate.utils import DeepSpeedPlugin

    _, env = _launcher_environment(CONFIGS / name)
    with mock.patch.dict(os.environ, env):
        plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == stage
    zero = plugin.deepspeed_config["zero_optimization"]
    # batch sizes and accumulation come from the stage's flags
    assert plugin.deepspeed_config["train_micro_batch_size_per_gpu"] == "auto"
    assert plugin.deepspeed_config["gradient_accumulation_steps"] == "auto"
    if stage == 3:  # the stage gathers the split weights to write its checkpoint (ranks.sharded_weights)
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True


def test_fsdp_config_builds_the_plugin_the_trainer_uses():
    from accelerate.utils import FullyShardedDataParallelPlugin

    _, env = _launcher_environment(CONFIGS / "fsdp.yaml")
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"  # whole weights for the checkpoint
    assert plugin.auto_wrap_policy is not None


def test_the_readme_gives_each_config_its_command():
    readme = (REPO / "README.md").read_text()
    for name in EXPECTED:
        assert f"train/configs/accelerate/{name}" in readme, name
