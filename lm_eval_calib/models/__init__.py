"""Model backends that return per-token statistics alongside lm-eval's log-likelihoods.

Kept free of imports so that importing :mod:`lm_eval_calib.models` costs nothing. What lives where:

- ``token_stats``: the result types (numpy only).
- ``hf_calib``: the ``hf-calib`` model (torch, lm-eval's ``hf``); its generation path in ``hf_generation``,
  its packed rows and their attention mask in ``packing``.
- ``vllm_calib``: the ``vllm-calib`` model; its typed options in ``vllm_options``, its thin layer over vLLM
  in ``vllm_engine``, the GGUF-to-folder export in ``vllm_export``.
- Shared by both: request preparation (``requests``), results back to lm-eval and registration
  (``plumbing``), ``--model_args`` value parsing (``model_args``), generated-token log-probs (``generated``).
"""
