"""Every lm-eval internal this plugin patches, in one place, each failing soft.

lm-eval has no API for what the plugin needs, so it wraps a few internals of lm-eval 0.4.13. Each
:class:`Patch` below names the internals it relies on; before touching anything it checks they exist, and
when one is missing (a newer or older lm-eval) or applying it fails, it gives ONE warning saying which
internal is missing and what the user loses, and lm-eval runs on unpatched. Never an exception into lm-eval.

Two kinds:

- registration (the start-up hook, ``_lm_eval_calib_startup``, applies them right after their lm-eval module
  executes; ``LM_EVAL_CALIB_NO_HOOK=1`` switches them off): our task folder on ``TaskManager``'s search path,
  ``calib_<task>`` wrappers of lm-eval's own tasks, ``hf-calib``/``vllm-calib`` in the model registry, and
  runs of our tasks building them before the model (in place before lm-eval's CLI calls ``simple_evaluate``,
  which is before any task class of ours loads). The task folder and the models step aside when lm-eval
  discovers plugins itself through entry points (upstream PRs #4015 and #4013): registering a second time
  would index every task twice.
- evaluation (applied by :func:`install_all`, which :mod:`lm_eval_calib.harness.base`, the base of every task
  class of ours, calls once when it loads): the bootstrap stderr of calibration metrics, and the check before
  inference that the model serves what the tasks need. Those whose module the start-up hook watches are
  applied by it too (the check before inference when ``lm_eval.evaluator`` loads); those of
  ``lm_eval.tasks.manager`` also serve runs of lm-eval's own tasks: the right doc_id for every ``--samples``
  document, and our errors through lm-eval's CLI as one line (the traceback with ``--verbosity DEBUG``).

Layering (docs/architecture.md): this module imports no task class. The harness code the patches call is the
checks of :mod:`lm_eval_calib.harness.preflight` (which import no task class either) and the ``calib_<task>``
builder, which :mod:`lm_eval_calib.registration` plugs in (:func:`plug_wrappers`); so the task classes can
apply these patches without an import cycle.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import itertools
import numbers
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from lm_eval_calib.harness.compat import lm_eval_line
from lm_eval_calib.models.model_args import TRUE_WORDS
from lm_eval_calib.task_folder import ANCHOR, task_dir

PATCHED_FLAG = "_lm_eval_calib_patched"
NO_HOOK_ENV = "LM_EVAL_CALIB_NO_HOOK"
WRAP_PREFIX = "calib_"
"""``calib_<task>``: a name lm-eval does not index, resolved by wrapping ``<task>`` (see harness/wrap.py)."""

TASK_ENTRY_POINT = f"lm_eval_calib.task_folder.{ANCHOR}"
"""Our ``lm_eval.tasks`` entry-point value (pyproject.toml): a module whose folder is the task folder."""

# lm-eval model name -> lazy "module:Class" target, imported only when a run asks for that model; the same
# pairs are the ``lm_eval.models`` entry points in pyproject.toml.
MODELS = {
    "hf-calib": "lm_eval_calib.models.hf_calib:HFCalibLM",
    "vllm-calib": "lm_eval_calib.models.vllm_calib:VLLMCalibLM",
    "completions-calib": "lm_eval_calib.models.completions_calib:CompletionsCalibLM",
    "chat-calib": "lm_eval_calib.models.chat_calib:ChatCalibLM",
}


@dataclass(frozen=True)
class Patch:
    """One change to lm-eval: what it relies on, when it applies, and what is lost without it."""

    name: str
    module: str
    """The lm-eval module after whose import the patch applies."""
    relies_on: tuple[str, ...]
    """Dotted lm-eval internals it reads or replaces; checked before anything is touched."""
    apply: Callable[[list[str]], None]
    """Applies the patch (idempotent), given the internals of ``relies_on`` that are missing (for partial)."""
    without_it: str
    """What the user gets when the patch cannot be applied (ends its warning)."""
    registration: bool = False
    """Part of drop-in registration: applied by the start-up hook, off with ``LM_EVAL_CALIB_NO_HOOK=1``."""
    partial: bool = False
    """Still applied to the internals that exist when some are missing."""
    line: str | None = None
    """The lm-eval line it is for (``"0.4"``: 0.4.13, ``"0.5"``: 0.5; :func:`lm_eval_calib.harness.compat.
    lm_eval_line`); skipped without a warning on the other. None: every line."""


def _resolve(dotted: str) -> Any:
    """The object at ``dotted`` (module path, then attributes), importing nothing that is not loaded."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = sys.modules.get(".".join(parts[:cut]))
        if module is not None:
            obj: Any = module
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
            return obj
    raise LookupError(dotted)


def _exists(dotted: str) -> bool:
    try:
        _resolve(dotted)
    except (LookupError, AttributeError):
        return False
    return True


def _flagged(func: Any) -> bool:
    return getattr(func, PATCHED_FLAG, False)


def _flag(func: Callable) -> Callable:
    setattr(func, PATCHED_FLAG, True)
    return func


# -- registration: our task folder (TaskManager.__init__) ----------------------------------------------------
def upstream_discovers_our_tasks(manager_module: ModuleType) -> bool:
    """Whether this lm-eval scans installed ``lm_eval.tasks`` entry points itself and finds our folder.

    Upstream PR #4015 adds ``discover_plugin_task_paths()`` to ``lm_eval.tasks.manager``; TaskManager then
    indexes the folders it returns. Asking it (rather than trusting our metadata) also covers an install
    whose entry point does not resolve: then we keep adding the folder ourselves.
    """
    discover = getattr(manager_module, "discover_plugin_task_paths", None)
    if not callable(discover):
        return False
    ours = task_dir().resolve()
    return any(os.path.realpath(path) == str(ours) for path in discover())


def _real(path: Any) -> str:
    """``path`` as the folder it names (absolute, symlinks and a trailing slash resolved)."""
    return os.path.realpath(os.path.expanduser(os.fspath(path)))


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _add_task_dir(include_path: Any) -> list:
    """``include_path`` with our task folder appended, keeping the caller's entries.

    Folders are compared resolved, not as strings: ``"$(lm-eval-calib tasks-dir)/"``, a relative path or a
    symlink to our folder is our folder, and indexing it twice makes lm-eval warn once per task ("overrides
    existing task"). An entry that already covers our folder (it, or a folder above it) leaves the list as
    it is; an entry inside our folder is dropped, since ours indexes it.
    """
    ours, ours_real = str(task_dir()), _real(task_dir())
    if include_path is None:
        return [ours]
    paths = list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
    try:
        real = [_real(path) for path in paths]
    except TypeError:  # not path-like: lm-eval reports it; only add ours
        return [*paths, ours]
    if any(_within(ours_real, path) for path in real):
        return paths
    kept = [path for path, resolved in zip(paths, real, strict=True) if not _within(resolved, ours_real)]
    return [*kept, ours]


def _drop_task_dir(include_path: Any) -> Any:
    """``include_path`` without the entries that are our task folder (any spelling) or inside it, for an
    lm-eval that indexes the folder itself (its ``lm_eval.tasks`` discovery): a second copy, e.g. the manual
    fallback ``--include_path "$(lm-eval-calib tasks-dir)"``, made it warn once per task (65 "overrides
    existing task"). None, or nothing left, stays None; entries that are not path-like are left as given."""
    if include_path is None:
        return None
    paths = list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
    ours = _real(task_dir())
    try:
        kept = [path for path in paths if not _within(_real(path), ours)]
    except TypeError:  # not path-like: lm-eval reports it
        return include_path
    if len(kept) == len(paths):
        return include_path
    return kept or None


def patch_task_folder(missing: list[str]) -> None:
    """Wrap ``TaskManager.__init__`` so every TaskManager indexes our task folder once: we add it to
    ``include_path`` (:func:`_add_task_dir`), or, where upstream indexes it already (see
    :func:`upstream_discovers_our_tasks`), we drop the caller's copies of it (:func:`_drop_task_dir`)."""
    module = sys.modules["lm_eval.tasks.manager"]
    cls = module.TaskManager
    original = cls.__init__
    if _flagged(original):
        return
    fix = _drop_task_dir if upstream_discovers_our_tasks(module) else _add_task_dir

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        if len(args) >= 2:  # include_path given positionally (verbosity, include_path, ...)
            args = (args[0], fix(args[1]), *args[2:])
        else:
            kwargs["include_path"] = fix(kwargs.get("include_path"))
        original(self, *args, **kwargs)

    cls.__init__ = _flag(__init__)


# -- registration: calib_<task> wrappers (TaskManager._load_spec, TaskManager.match_tasks) -------------------
@dataclass
class _Wrappers:
    """The ``calib_<task>`` builder the wrapper patch calls; plugged in by :func:`plug_wrappers`."""

    load: Callable[[Any, str], Any] | None = None
    """``load(task_manager, name)``: the task for ``calib_<x>`` (``TaskManager._load_spec``)."""
    match: Callable[[Any, list[str], list[str]], list[str]] | None = None
    """``match(task_manager, patterns, matched)``: lm-eval's matches plus the ``calib_<x>`` names."""


_wrappers = _Wrappers()


def plug_wrappers(
    load: Callable[[Any, str], Any], match: Callable[[Any, list[str], list[str]], list[str]]
) -> None:
    """Name the ``calib_<task>`` builder (:mod:`lm_eval_calib.registration` plugs in
    :mod:`lm_eval_calib.harness.wrap`'s ``load`` and ``match``, imported on first use)."""
    _wrappers.load, _wrappers.match = load, match


def patch_task_index_name(missing: list[str]) -> None:
    """lm-eval 0.5 renamed ``TaskManager.task_index`` (name -> index entry; same entries: ``name``, ``kind``,
    ``yaml_path``, ``cfg``, ``tags``) to the property ``_task_index``: give it back, read-only, under the name
    the ``calib_<task>`` wrappers and the listing read."""
    cls = sys.modules["lm_eval.tasks.manager"].TaskManager
    if "task_index" not in vars(cls):
        cls.task_index = property(lambda self: self._task_index, doc="lm-eval-calib: ``_task_index``")


def patch_calib_wrappers(missing: list[str]) -> None:
    """Resolve ``calib_<task>`` names that lm-eval does not index by wrapping ``<task>``.

    ``_load_spec`` (one name -> Task, Group or tags' tasks; ``load()`` calls it) and ``match_tasks`` (the
    CLI's check that every ``--tasks`` name exists, before the model loads); ``task_index`` (name -> entry)
    tells which names lm-eval indexes (ours included): those never reach the wrapper. The wrapping itself is
    :mod:`lm_eval_calib.harness.wrap`, plugged in by :mod:`lm_eval_calib.registration` (the start-up hook's
    module, which is loaded whenever registration patches apply).
    """
    if _wrappers.load is None or _wrappers.match is None:
        raise LookupError("no calib_<task> builder is plugged in (lm_eval_calib.registration plugs it in)")
    load, match = _wrappers.load, _wrappers.match
    cls = sys.modules["lm_eval.tasks.manager"].TaskManager
    load_spec, match_tasks = cls._load_spec, cls.match_tasks
    if _flagged(load_spec):
        return

    def wanted(manager, name) -> bool:
        return isinstance(name, str) and name.startswith(WRAP_PREFIX) and name not in manager.task_index

    @functools.wraps(load_spec)
    def _load_spec(self, spec, *args, **kwargs):
        if wanted(self, spec):
            return load(self, spec)
        return load_spec(self, spec, *args, **kwargs)

    @functools.wraps(match_tasks)
    def _match_tasks(self, task_list, *args, **kwargs):
        matched = match_tasks(self, task_list, *args, **kwargs)
        patterns = [task_list] if isinstance(task_list, str) else list(task_list)
        if not any(wanted(self, pattern) for pattern in patterns):
            return matched
        return match(self, patterns, matched)

    cls._load_spec, cls.match_tasks = _flag(_load_spec), _match_tasks


# -- registration: our models (lm_eval.api.registry.model_registry) ------------------------------------------
def upstream_discovers_our_models() -> bool:
    """Whether this lm-eval registers installed ``lm_eval.models`` entry points itself (upstream PR #4013:
    ``lm_eval.api.registry.load_plugins``, called by ``get_model``) and ours are installed."""
    if not callable(getattr(sys.modules.get("lm_eval.api.registry"), "load_plugins", None)):
        return False
    from importlib.metadata import entry_points

    declared = {ep.name: ep.value for ep in entry_points(group="lm_eval.models")}
    return all(declared.get(name) == target for name, target in MODELS.items())


def register_models(missing: list[str]) -> None:
    """Add our models to lm-eval's registry as lazy placeholders, right after ``lm_eval.models`` loads.

    Registering earlier (when ``lm_eval.api.registry`` loads) would make the registry non-empty and stop
    lm-eval 0.4.13 from importing its own models on first use.
    """
    if upstream_discovers_our_models():
        return
    model_registry = _resolve("lm_eval.api.registry.model_registry")
    for name, target in MODELS.items():
        if name not in model_registry:
            model_registry.register(name, target=target)


# -- evaluation: bootstrap stderr of calibration metrics (stderr_for_metric) ---------------------------------
STDERR_SITES = ("lm_eval.evaluator_utils.stderr_for_metric", "lm_eval.api.metrics.stderr_for_metric")
"""Where lm-eval looks up an aggregation's stderr function: 0.4.13's evaluator_utils imports it by name; the
``lm_eval.api.metrics`` one is the definition (lm-eval 0.5's scorers look it up there at call time)."""


def _wrap_stderr_for_metric(original: Callable) -> Callable:
    from lm_eval_calib.record_metrics import STDERR_ATTRIBUTE  # numpy and the metrics: only when applied

    @functools.wraps(original)
    def stderr_for_metric(metric, bootstrap_iters):
        ours = getattr(metric, STDERR_ATTRIBUTE, None)
        if ours is None:
            return original(metric, bootstrap_iters)
        if not bootstrap_iters or bootstrap_iters <= 0:
            return None  # --bootstrap_iters 0 means "no stderr", as for lm-eval's own metrics
        return functools.partial(ours, n_resamples=bootstrap_iters)

    return _flag(stderr_for_metric)


def patch_stderr_v05(missing: list[str]) -> None:
    """lm-eval 0.5: ``lm_eval.api.metrics.stderr_for_metric`` (which 0.5's ``Scorer.aggregate`` looks up when
    it runs) answers, while one of our tasks aggregates, as 0.4.13 does
    (:mod:`lm_eval_calib.harness.compat.stderr_v05`): our bootstrap for calibration aggregations, lm-eval's
    for ``mean`` and 0.4.13's bootstrapped list, none for the rest; outside our tasks, lm-eval's own."""
    from lm_eval_calib.harness.compat import stderr_v05
    from lm_eval_calib.record_metrics import STDERR_ATTRIBUTE

    module = sys.modules["lm_eval.api.metrics"]
    original = module.stderr_for_metric
    if _flagged(original):
        return

    @functools.wraps(original)
    def stderr_for_metric(metric, bootstrap_iters):
        return stderr_v05.choose(metric, bootstrap_iters, original, module.mean, STDERR_ATTRIBUTE)

    module.stderr_for_metric = _flag(stderr_for_metric)


def patch_stderr(missing: list[str]) -> None:
    """Give aggregations that carry ``calibration_stderr`` their own vectorised bootstrap; pass the rest
    through untouched, so lm-eval's own tasks behave exactly as before."""
    for site in STDERR_SITES:
        if site in missing:
            continue
        module_name, attr = site.rsplit(".", 1)
        module = sys.modules[module_name]
        current = getattr(module, attr)
        if not _flagged(current):
            setattr(module, attr, _wrap_stderr_for_metric(current))


# -- evaluation: the check before inference (lm_eval.evaluator.evaluate) -------------------------------------
def patch_evaluate(missing: list[str]) -> None:
    """Wrap ``lm_eval.evaluator.evaluate`` (which ``simple_evaluate`` and the CLI call by module-global
    lookup): the only place that sees the model and the tasks together, before any request runs."""
    from lm_eval_calib.harness import preflight

    evaluator = sys.modules["lm_eval.evaluator"]
    original = evaluator.evaluate
    if _flagged(original):
        return

    @functools.wraps(original)
    def evaluate(*args, **kwargs):
        lm = kwargs.get("lm", args[0] if args else None)
        task_dict = kwargs.get("task_dict", args[1] if len(args) > 1 else None)
        preflight.check_token_stats(lm, task_dict)
        preflight.bind_models(lm, task_dict)
        return original(*args, **kwargs)

    evaluator.evaluate = _flag(evaluate)


# -- registration: tasks before the model (lm_eval.evaluator.simple_evaluate) --------------------------------
EARLY_PARAMETERS = ("model", "model_args", "tasks", "samples", "limit", "task_manager", "metadata")
"""The parameters of ``simple_evaluate`` the patch reads or sets (checked when it applies)."""


def names_our_tasks(tasks: Any) -> bool:
    """Whether a ``tasks`` list names one of ours (``calib_*``: our task folder's names and the wrappers)."""
    names = [tasks] if isinstance(tasks, str) else tasks if isinstance(tasks, (list, tuple)) else []
    return any(isinstance(name, str) and name.startswith(WRAP_PREFIX) for name in names)


def _model_args_dict(model_args: Any) -> dict | None:
    """``model_args`` as simple_evaluate reads it (a ``key=value,...`` string or a dict), None if unreadable
    (then simple_evaluate reports it, as before)."""
    if isinstance(model_args, dict):
        return model_args
    if model_args is None or model_args == "":
        return {}
    if isinstance(model_args, str):
        try:
            return _resolve("lm_eval.evaluator.simple_parse_args_string")(model_args)
        except Exception:
            return None
    return None


def _task_manager(arguments: dict, model_args: dict) -> Any:
    """The TaskManager simple_evaluate would use: the caller's, or one with simple_evaluate's metadata
    (the model_args, then ``metadata`` over them)."""
    if arguments.get("task_manager") is not None:
        return arguments["task_manager"]
    task_manager_class = _resolve("lm_eval.evaluator.TaskManager")
    return task_manager_class(metadata=model_args | (arguments.get("metadata") or {}))


def check_samples_early(loaded: Any, samples: Any) -> None:
    """``--samples`` checked against the built tasks (:func:`check_samples`, as ``doc_iterator`` will)."""
    if not isinstance(samples, dict) or not isinstance(loaded, dict):
        return
    tasks = loaded.get("tasks") or {}
    for name, indices in samples.items():
        if name in tasks and indices:
            check_samples(name, indices, len(tasks[name].eval_docs))


@contextlib.contextmanager
def _served_once(manager: Any, tasks: Any, loaded: Any):
    """While simple_evaluate runs, its ``manager.load(tasks)`` returns the tasks built already (the same
    list object: simple_evaluate passes its ``tasks`` on), once; any other call loads as usual."""
    load = manager.load

    def served(task_list, *args, **kwargs):
        vars(manager).pop("load", None)
        if task_list is tasks and not args and not kwargs:
            return loaded
        return load(task_list, *args, **kwargs)

    manager.load = served
    try:
        yield
    finally:
        vars(manager).pop("load", None)


def _early_call(signature: inspect.Signature, args: tuple, kwargs: dict) -> inspect.BoundArguments | None:
    """The call's arguments when it is one to build tasks for first: a model named (not an LM object, which
    is loaded already) and our tasks in the list; None to pass the call through as it is."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:  # simple_evaluate reports a wrong call itself
        return None
    arguments = bound.arguments
    if not isinstance(arguments.get("model"), str) or not names_our_tasks(arguments.get("tasks")):
        return None
    if arguments.get("limit") is not None and arguments.get("samples") is not None:
        return None  # simple_evaluate refuses the pair before anything else
    return bound


def _wrap_simple_evaluate(original: Callable) -> Callable:
    from lm_eval_calib.harness import preflight

    signature = inspect.signature(original)

    @functools.wraps(original)
    def simple_evaluate(*args, **kwargs):
        bound = _early_call(signature, args, kwargs)
        model_args = _model_args_dict(bound.arguments.get("model_args")) if bound else None
        if bound is None or model_args is None:
            return original(*args, **kwargs)
        manager = _task_manager(bound.arguments, model_args)
        tasks = bound.arguments["tasks"]
        loaded = manager.load(tasks)  # the errors the run would raise after the model, now before it
        check_samples_early(loaded, bound.arguments.get("samples"))
        preflight.check_model_folder(model_args)
        bound.arguments["task_manager"] = manager
        with _served_once(manager, tasks, loaded):
            return original(*bound.args, **bound.kwargs)

    return _flag(simple_evaluate)


def patch_simple_evaluate(missing: list[str]) -> None:
    """Build the tasks before the model when a run names our tasks.

    lm-eval 0.4.13's ``simple_evaluate`` creates the model (15-60 s for a real one) before it builds the
    tasks, so a bad option, missing data or a bad ``--samples`` index was reported only after the model had
    loaded. The wrapper builds the tasks first with the TaskManager simple_evaluate would use, checks
    ``--samples`` and a ``pretrained=`` folder, then calls simple_evaluate with that TaskManager, whose
    ``load`` hands it the tasks built (once: built once, as before). Applied by the start-up hook when
    ``lm_eval.evaluator`` loads, so it is in place before lm-eval's CLI looks ``simple_evaluate`` up. Runs
    that name none of our tasks, or pass a model object, go straight to simple_evaluate.
    """
    evaluator = sys.modules["lm_eval.evaluator"]
    original = evaluator.simple_evaluate
    if _flagged(original):
        return
    parameters = inspect.signature(original).parameters
    absent = [name for name in EARLY_PARAMETERS if name not in parameters]
    if absent:
        raise LookupError(f"simple_evaluate has no parameter {', '.join(absent)}")
    evaluator.simple_evaluate = _wrap_simple_evaluate(original)


# -- evaluation: --samples document ids (Task.doc_iterator) --------------------------------------------------
def check_samples(task_name: str, indices: Any, n_docs: int) -> list[int]:
    """``indices`` (one task's ``--samples`` list) as ints, or a ValueError naming the bad entry: each must
    be an integer in ``[0, n_docs)``, listed once. (lm-eval 0.4.13 asserts only ``< n_docs``: ``-1`` then
    logs row 0 as doc_id -1, ``1.0`` selects row 1 as doc_id 1.0, and a repeated index shifts every id after
    it.)"""
    where = f"--samples for {task_name}"
    span = f"an integer from 0 to {n_docs - 1}" if n_docs else "and the task has no documents"
    if isinstance(indices, (str, bytes)) or not hasattr(indices, "__iter__"):
        raise ValueError(f"{where}: expected a list of document indices, got {indices!r}")
    seen: set[int] = set()
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) or index < 0:
            raise ValueError(
                f"{where}: {index!r} is not a document index ({span}; negative indices are not supported)"
            )
        if index >= n_docs:
            raise ValueError(f"{where}: {index} is out of range: the task has {n_docs} documents ({span})")
        if index in seen:
            raise ValueError(f"{where}: {index} is listed twice; list each document once")
        seen.add(int(index))
    return [int(index) for index in indices]


def _wrap_doc_iterator(original: Callable) -> Callable:
    @functools.wraps(original)
    def doc_iterator(self, *args, **kwargs):
        samples = kwargs.get("samples")
        if args or not samples:
            return original(self, *args, **kwargs)
        docs = self.eval_docs
        indices = check_samples(getattr(self.config, "task", None) or type(self).__name__, samples, len(docs))
        rank, world_size = int(kwargs.get("rank") or 0), int(kwargs.get("world_size") or 1)
        # position i of the list is row indices[i]: the evaluator logs doc_id = samples[position]
        return itertools.islice(enumerate(docs[i] for i in indices), rank, None, world_size)

    return _flag(doc_iterator)


def patch_doc_iterator(missing: list[str]) -> None:
    """Make ``--samples`` positions and rows agree, whatever the order of the list.

    lm-eval's evaluator logs the document at position ``i`` of ``doc_iterator`` as ``doc_id = samples[i]``,
    but 0.4.13's ``doc_iterator`` yields the selected rows in row order: ``[5, 2]`` logged row 2 as doc_id 5
    (and row 5 as 2), so paired findings and the report, which match documents by doc_id, mis-paired them.
    Here position ``i`` is row ``samples[i]``; indices that name no single row are refused by name
    (:func:`check_samples`). Without ``--samples``, lm-eval's own iterator runs.
    """
    cls = sys.modules["lm_eval.api.task"].Task
    if not _flagged(cls.doc_iterator):
        cls.doc_iterator = _wrap_doc_iterator(cls.doc_iterator)


# -- evaluation: our errors through lm-eval's CLI, one line (sys.excepthook) ---------------------------------
ERROR_PREFIX = "lm-eval-calib: error: "
_OUR_PACKAGES = ("lm_eval_calib", "lm_eval_calib_train")


def _lm_eval_cli_files() -> tuple[str, ...]:
    """Source files of lm-eval's command line (``lm_eval/_cli/``, ``lm_eval/__main__.py``), where loaded."""
    package = sys.modules.get("lm_eval")
    where = getattr(package, "__file__", None)
    if not where:
        return ()
    root = os.path.dirname(os.path.realpath(where))
    return (os.path.join(root, "_cli") + os.sep, os.path.join(root, "__main__.py"))


def _frames(tb: Any) -> list[str]:
    files = []
    while tb is not None:
        files.append(os.path.realpath(tb.tb_frame.f_code.co_filename))
        tb = tb.tb_next
    return files


def _our_folders() -> tuple[str, ...]:
    folders = [os.path.dirname(os.path.realpath(__file__))]
    with contextlib.suppress(Exception):
        folders.append(os.path.realpath(task_dir()))
    return tuple(folder.rstrip(os.sep) + os.sep for folder in folders)


def raised_by_us(exc: BaseException, frames: list[str]) -> bool:
    """An error of ours (its class is ours) or a ``ValueError`` our code raised (the innermost frame is ours):
    the input and option errors whose message says what to fix. A bug (any other error, or one raised inside
    a library we call) keeps its traceback."""
    if type(exc).__module__.split(".")[0] in _OUR_PACKAGES:
        return True
    return isinstance(exc, ValueError) and bool(frames) and frames[-1].startswith(_our_folders())


def _debug_requested(argv: list[str]) -> bool:
    """``--verbosity DEBUG`` / ``-v DEBUG`` / ``--verbosity=DEBUG`` on the command line, or
    ``LMEVAL_LOG_LEVEL=DEBUG``, or lm-eval's logger already at DEBUG."""
    if os.environ.get("LMEVAL_LOG_LEVEL", "").strip().upper() == "DEBUG":
        return True
    for i, arg in enumerate(argv):
        flag, _, value = arg.partition("=")
        if flag in ("--verbosity", "-v") and not value and i + 1 < len(argv):
            value = argv[i + 1]
        if flag in ("--verbosity", "-v") and value.strip().upper() == "DEBUG":
            return True
    import logging

    return logging.getLogger("lm_eval").isEnabledFor(logging.DEBUG)


def one_line_error(exc: BaseException, tb: Any, argv: list[str]) -> str | None:
    """The line to print instead of the traceback, or None to print the traceback: only for our errors that
    went through lm-eval's CLI, and not when ``--verbosity DEBUG`` asks for tracebacks."""
    cli = _lm_eval_cli_files()
    frames = _frames(tb)
    if not cli or not any(frame.startswith(cli) for frame in frames):
        return None
    if not raised_by_us(exc, frames) or _debug_requested(argv):
        return None
    message = str(exc).strip() or type(exc).__name__
    return ERROR_PREFIX + message.removeprefix("lm-eval-calib: ")


def _wrap_excepthook(previous: Callable) -> Callable:
    def excepthook(exc_type, exc, tb):
        try:
            line = one_line_error(exc, tb, sys.argv[1:])
        except Exception:  # never lose the error itself: fall back to the traceback
            line = None
        if line is None:
            previous(exc_type, exc, tb)
        else:
            print(line, file=sys.stderr)

    return _flag(excepthook)


def patch_excepthook(missing: list[str]) -> None:
    """Print the errors we raise through lm-eval's CLI (wrap refusals, data and option errors) as one line,
    ``lm-eval-calib: error: <message>``, instead of a traceback that buries it; ``--verbosity DEBUG`` keeps
    the traceback. Decided when the error reaches the interpreter (``sys.excepthook``), so it relies on no
    lm-eval internal: only tracebacks through lm-eval's CLI files are touched, everything else (and any
    failure here) goes to the previous hook."""
    if not _flagged(sys.excepthook):
        sys.excepthook = _wrap_excepthook(sys.excepthook)


def _index_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def patch_yaml_cache(missing: list[str]) -> None:
    """Build lm-eval's task index from cached parsed YAML files (:mod:`lm_eval_calib.yaml_cache`): the index's
    quick parse (``resolve_func=False``) of a file whose stat, and its includes' stats, are unchanged comes
    from the store; the YAML loader's own recursion through ``include:`` is recorded so that the includes of a
    freshly parsed file are known; the store is written after each index build."""
    from lm_eval.tasks import _index, _yaml_loader

    from lm_eval_calib import yaml_cache

    if _flagged(_index.TaskIndex.build):
        return
    version = _index_version()
    parse = _yaml_loader.load_yaml

    @functools.wraps(parse)
    def recording(path, *args, **kwargs):
        yaml_cache.record_read(path)
        return parse(path, *args, **kwargs)

    @functools.wraps(parse)
    def cached(path, *args, resolve_func=True, recursive=True, **kwargs):
        cache = yaml_cache.current_cache(version)
        if cache is None or args or kwargs or resolve_func or not recursive:
            return recording(path, *args, resolve_func=resolve_func, recursive=recursive, **kwargs)
        return cache.load(path, lambda: recording(path, resolve_func=False, recursive=True))

    build = _index.TaskIndex.build

    @functools.wraps(build)
    def build_and_store(*args, **kwargs):
        try:
            return build(*args, **kwargs)
        finally:
            cache = yaml_cache.current_cache(version)
            if cache is not None:
                cache.save()

    _yaml_loader.load_yaml = recording  # its recursion into includes goes through the module's global
    _index.load_yaml = cached
    _index.TaskIndex.build = staticmethod(_flag(build_and_store))


ALL_PATCHES: tuple[Patch, ...] = (
    Patch(
        "task YAML cache",
        "lm_eval.tasks.manager",
        (
            "lm_eval.tasks._index.TaskIndex.build",
            "lm_eval.tasks._index.load_yaml",
            "lm_eval.tasks._yaml_loader.load_yaml",
        ),
        patch_yaml_cache,
        "every lm_eval run parses all of lm-eval's task YAML files again (6-12 s on two CPU cores); results "
        "are unaffected",
    ),
    Patch(
        "task folder",
        "lm_eval.tasks.manager",
        ("lm_eval.tasks.manager.TaskManager.__init__",),
        patch_task_folder,
        "lm_eval does not see lm-eval-calib's tasks by itself: pass `--include_path {task_dir}` to lm_eval",
        registration=True,
    ),
    Patch(
        "task index name",
        "lm_eval.tasks.manager",
        ("lm_eval.tasks.manager.TaskManager._task_index",),
        patch_task_index_name,
        "calib_<task> wrappers of lm-eval's tasks are off (lm-eval-calib's own tasks still work)",
        registration=True,
        line="0.5",
    ),
    Patch(
        "calib_<task> wrappers",
        "lm_eval.tasks.manager",
        (
            "lm_eval.tasks.manager.TaskManager._load_spec",
            "lm_eval.tasks.manager.TaskManager.match_tasks",
            "lm_eval.tasks.manager.TaskManager.task_index",
        ),
        patch_calib_wrappers,
        "calib_<task> wrappers of lm-eval's tasks are off (lm-eval-calib's own tasks still work)",
        registration=True,
    ),
    Patch(
        "models",
        "lm_eval.models",
        ("lm_eval.api.registry.model_registry",),
        register_models,
        "`--model hf-calib` / `vllm-calib` are not registered by name: import lm_eval_calib.models.hf_calib "
        "before running (lm-eval's `--plugins lm_eval_calib.models.hf_calib` where it has that option)",
        registration=True,
    ),
    Patch(
        "stderr",
        "lm_eval.evaluator_utils",
        STDERR_SITES,
        patch_stderr,
        "where lm-eval looks it up there, calibration metrics' *_stderr are N/A (or lm-eval's generic, slow "
        "bootstrap); the metrics themselves are unaffected",
        partial=True,
        line="0.4",
    ),
    Patch(
        "stderr (lm-eval 0.5)",
        "lm_eval.api.metrics",
        (
            "lm_eval.api.metrics.stderr_for_metric",
            "lm_eval.api.metrics.mean",
            "lm_eval.scorers.Scorer.aggregate",
        ),
        patch_stderr_v05,
        "calibration metrics' *_stderr go to lm-eval 0.5's generic pool bootstrap, which cannot pickle "
        "lm-eval-calib's aggregations (the run stops when it aggregates; with LMEVAL_DISABLE_MULTIPROC=1 it "
        "draws 100,000 resamples of each metric in Python instead of lm-eval-calib's seeded bootstrap)",
        line="0.5",
    ),
    Patch(
        "tasks before the model",
        "lm_eval.evaluator",
        (
            "lm_eval.evaluator.simple_evaluate",
            "lm_eval.evaluator.TaskManager",
            "lm_eval.evaluator.simple_parse_args_string",
            "lm_eval.tasks.manager.TaskManager.load",
        ),
        patch_simple_evaluate,
        "runs of lm-eval-calib's tasks load the model before the tasks are built, so a bad option, missing "
        "data or a bad --samples index is reported only after the model has loaded",
        registration=True,
    ),
    Patch(
        "check before inference",
        "lm_eval.evaluator",
        ("lm_eval.evaluator.evaluate",),
        patch_evaluate,
        "tasks needing token statistics are not checked against the model before inference, and generation "
        "calibration tasks stop with an error after lm-eval's generation (they need the model handed over)",
    ),
    Patch(
        "--samples document ids",
        "lm_eval.tasks.manager",
        ("lm_eval.api.task.Task.doc_iterator",),
        patch_doc_iterator,
        "a --samples list out of increasing order logs documents under other documents' doc_id, and negative "
        "or repeated indices are not refused: list each index once, in increasing order",
    ),
    Patch(
        "one-line errors",
        "lm_eval.tasks.manager",
        (),
        patch_excepthook,
        "errors of lm-eval-calib through lm_eval's CLI print with their traceback",
    ),
)

PATCHES: tuple[Patch, ...] = tuple(patch for patch in ALL_PATCHES if patch.line in (None, lm_eval_line()))
"""The patches of the installed lm-eval's line (:func:`lm_eval_calib.harness.compat.lm_eval_line`), chosen
once at import; :data:`ALL_PATCHES` has those of every line."""

_warned: set[str] = set()
_decided: dict[str, bool] = {}


def _lm_eval_version() -> str:
    try:
        from importlib.metadata import version

        return f"lm-eval {version('lm_eval')}"
    except Exception:
        return "this lm-eval"


def _warn_once(patch: Patch, problem: str) -> None:
    if patch.name in _warned:
        return
    _warned.add(patch.name)
    without_it = patch.without_it
    if "{task_dir}" in without_it:
        try:
            without_it = without_it.format(task_dir=task_dir())
        except FileNotFoundError:
            without_it = without_it.format(task_dir="<lm-eval-calib's tasks folder>")
    warnings.warn(f"lm-eval-calib: {patch.name} patch: {problem}; {without_it}", stacklevel=3)


def apply(patch: Patch) -> bool:
    """Apply one patch if what it relies on is there; otherwise, or if it fails, warn once. True if applied
    (wholly or, for a partial patch, in part).

    Decided once per process: a patch that could not be applied is not tried again (lm-eval's internals do
    not come back), so a run is either patched from the start or, as its warning said, not at all.
    """
    if patch.name in _decided:
        return _decided[patch.name]
    _decided[patch.name] = applied = _apply(patch)
    return applied


def _apply(patch: Patch) -> bool:
    if patch.line is not None and patch.line != lm_eval_line():
        return False  # a patch for the other lm-eval line: nothing to do, nothing lost
    missing = [name for name in patch.relies_on if not _exists(name)]
    if missing:
        _warn_once(patch, f"{', '.join(missing)} not found in {_lm_eval_version()}")
        if not patch.partial or len(missing) == len(patch.relies_on):
            return False
    try:
        patch.apply(missing)
    except Exception as exc:  # lm-eval changed shape in a way the check did not see: degrade, never crash
        _warn_once(patch, f"could not be applied ({exc!r})")
        return False
    return True


def hook_enabled() -> bool:
    """Drop-in registration is on unless ``LM_EVAL_CALIB_NO_HOOK`` is set to a true value."""
    return os.environ.get(NO_HOOK_ENV, "").strip().lower() not in TRUE_WORDS


def after_import(module: ModuleType) -> None:
    """The start-up hook's entry: apply the patches of ``module`` right after it executes (registration
    patches, and evaluation patches that must also serve runs of lm-eval's own tasks). An evaluation patch
    whose internals are not loaded yet is left to :func:`install_all`, which imports them (importing them
    here, while lm-eval's package is half initialised, could fail)."""
    for patch in PATCHES:
        if patch.module != module.__name__:
            continue
        if patch.registration or all(_exists(internal) for internal in patch.relies_on):
            apply(patch)


def install_all() -> None:
    """Apply every patch that can apply now (idempotent; :mod:`lm_eval_calib.harness.base` calls it when it
    loads, so every run of our task classes has the evaluation patches, start-up hook or not).

    Evaluation patches import their lm-eval module; registration patches apply only when their module is
    already loaded (else the start-up hook applies them when it loads) and the hook is not switched off.
    """
    for patch in PATCHES:
        if patch.registration:
            if not hook_enabled() or patch.module not in sys.modules:
                continue
        else:
            try:
                importlib.import_module(patch.module)
            except Exception as exc:
                _warn_once(patch, f"{patch.module} could not be imported ({exc!r})")
                continue
            for internal in patch.relies_on:  # the modules the internals live in, where they exist
                with contextlib.suppress(ImportError):  # one that does not is reported by apply()
                    importlib.import_module(internal.rsplit(".", 1)[0])
        apply(patch)
