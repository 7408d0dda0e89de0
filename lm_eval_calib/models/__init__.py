"""Model backends that return per-token statistics alongside lm-eval's log-likelihoods.

Kept free of imports so that importing :mod:`lm_eval_calib.models` costs nothing: the result types live in
:mod:`lm_eval_calib.models.token_stats` (numpy only), the ``hf-calib`` model in
:mod:`lm_eval_calib.models.hf_calib` (imports torch, transformers and lm-eval's ``hf`` model).
"""
