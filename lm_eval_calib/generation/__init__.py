"""Calibration of generated answers: confidence estimators for lm-eval's ``generate_until`` tasks.

The task class lives in :mod:`lm_eval_calib.harness.generation`; this package holds what it is built from:
the estimator registry and the prompts/parsers of the second-pass estimators (:mod:`.estimators`), the
generated text that carries its own token log-probs (:mod:`.text`), and the batched second passes through
the model (:mod:`.passes`). See docs/generation.md.
"""
