"""Marks this folder for lm-eval's ``lm_eval.tasks`` entry point; holds no code.

lm-eval (upstream PR #4015) resolves the entry point ``lm_eval_calib.task_folder.anchor`` to this file and
scans the folder that contains it for task YAMLs. See :mod:`lm_eval_calib.task_folder` for why a module here
is needed; lm-eval 0.4.13 does not read the entry point (the start-up hook does that job there).
"""
