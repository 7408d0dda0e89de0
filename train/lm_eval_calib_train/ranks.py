"""Which process of a multi-process launch this is, and the few things only one of them may do.

A stage launched with N processes (``torchrun --nproc_per_node N -m lm_eval_calib_train sft ...`` or
``accelerate launch --multi_gpu --num_processes N ...``) runs the same code on every rank; the trainer splits
each step's batches across them and averages gradients. Files are another matter: the checkpoint folder,
its manifest, the step log and the work folder are written by the main process only, and the other ranks
wait for it, so two ranks never race on ``--output`` or its ``--overwrite`` / ``--resume`` rules.

On a machine without an accelerator, accelerate forms a process group only when told to use the CPU
(``ACCELERATE_USE_CPU``, which ``accelerate launch --cpu`` sets but then starts a single process); without
it every rank of a ``torchrun`` launch trains alone on all the data as its own rank 0.
:func:`process_group_arguments` asks the trainer for a gloo group in that case, so the CPU runs the same
data-parallel code as a GPU cluster.

Reads only the launcher's environment: importing this module loads nothing heavy.
"""

from __future__ import annotations

import os

_RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def _first_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


def world_size() -> int:
    """Processes in this launch (1 without a launcher)."""
    return _first_int(_SIZE_VARIABLES, 1)


def rank() -> int:
    """This process's global rank (0 without a launcher)."""
    return _first_int(_RANK_VARIABLES, 0)


def is_main() -> bool:
    """The process that writes the checkpoint folder, its manifest and the step log."""
    return rank() == 0


def process_group_arguments() -> dict[str, object]:
    """``TrainingArguments`` that make several CPU processes one gloo group (empty otherwise: one process,
    or a GPU, where the launcher's own settings apply)."""
    if world_size() <= 1:
        return {}
    import torch

    if torch.accelerator.is_available():
        return {}
    return {"use_cpu": True, "ddp_backend": "gloo"}


def wait_for_everyone() -> None:
    """A barrier across the ranks once the trainer has formed the process group; nothing otherwise."""
    if world_size() <= 1:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def global_batch(batch_size: int, gradient_accumulation_steps: int) -> int:
    """Examples per optimizer step over all processes: ``--batch-size`` is per process."""
    return batch_size * gradient_accumulation_steps * world_size()


def sharded_weights(trainer) -> dict | None:
    """The trained weights gathered from all ranks when DeepSpeed or FSDP shards them, else ``None`` (the
    model's own weights are complete on every rank, and ``save_pretrained`` reads them itself).

    Every rank must call it (gathering is a collective), before the main process writes the checkpoint
    with ``save_pretrained(folder, state_dict=...)``. DeepSpeed ZeRO-3 needs ``zero3_save_16bit_model: true``
    in the accelerate config (as in ``train/configs/accelerate/deepspeed_zero3.yaml``).
    """
    from accelerate.utils import DistributedType

    accelerator = trainer.accelerator
    sharded = accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
    if not (sharded or getattr(accelerator, "is_fsdp2", False)):
        return None
    return accelerator.get_state_dict(trainer.model_wrapped)
