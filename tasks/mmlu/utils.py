"""Helpers the calib_mmlu YAMLs name with ``!function``; the logic lives in the installed package."""

from lm_eval_calib.data.mmlu import load_mmlu
from lm_eval_calib.harness.task import CalibrationTask


class CalibMMLU(CalibrationTask):
    """MMLU with lm-eval's prompt; 5-shot examples come from the dev split of the question's subject."""

    fewshot_group_field = "subject"
    category_field = "subject"


def load_dataset(data_dir=None, subject=None, **_metadata):
    """``custom_dataset`` hook: lm-eval passes the task metadata (data_dir, ...) and dataset_kwargs."""
    return load_mmlu(data_dir=data_dir, subject=subject)
