"""lm-evaluation-harness on a live model: any task name, group, tag or local task YAML.

What ``simple_evaluate`` does on every call, this evaluator splits in two. Once per process
(per evaluator): index the task folders, load the tasks and their data, build the requests
(prompts, few-shot contexts) of the documents calls ask for. On every call: pick the requests
of the chosen documents, clear their previous responses, run the model on them, then filter,
score and aggregate exactly as lm-eval does.
Nothing that depends on the weights survives a call, so a model whose weights are replaced in
place between calls is scored on its new weights.

Task YAMLs found under ``include_path`` may name their ``data_files`` relative to the YAML's own
folder (plain lm-eval resolves them against the current directory); see ``_task_factory``.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mergesearch.configs import TASKS_DIR
from mergesearch.evaluators import runtime
from mergesearch.evaluators.base import Direction, EvalResult, Selection, TimedEvaluator, register
from mergesearch.evaluators.errors import EvaluatorError, EvaluatorRuntimeError

DEFAULT_INCLUDE_PATH = TASKS_DIR

# TaskManagers indexed in this process, by (include paths, whether lm-eval's own tasks are
# indexed too). Indexing lm-eval's thousands of built-in tasks takes seconds to tens of seconds,
# a local folder next to nothing, so the built-in index is only built when a name is not found
# locally (bench/RESULTS_demo.md, evaluator overhead).
_MANAGERS: dict[tuple[tuple[str, ...], bool], Any] = {}


@register("lm_eval")
class LMEvalEvaluator(TimedEvaluator):
    """Scores ``tasks`` with lm-eval; metric names are ``"<task>/<metric>,<filter>"``.

    Options: ``tasks`` (names, groups, tags or YAML paths), ``include_path`` (folders of local
    task YAMLs; default the repository's ``configs/tasks``), ``metrics`` (lm-eval metric keys
    such as ``"exact_match,strip"`` that every task must produce, or ``"<task>/<key>"`` for one
    task; default every metric), ``num_fewshot``, ``batch_size``, ``max_length``,
    ``gen_max_tokens`` (overrides the tasks' ``max_gen_toks``), ``limit`` (default per call),
    ``fewshot_seed``, ``builtin_tasks`` (also look names up among lm-eval's own tasks, which
    are slow to index, once per process; default true), ``threads``.
    """

    name = "lm_eval"

    def __init__(
        self,
        tasks: str | Sequence[str],
        *,
        include_path: str | Path | Sequence[str | Path] | None = None,
        metrics: Sequence[str] | None = None,
        num_fewshot: int | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
        gen_max_tokens: int | None = None,
        limit: int | None = None,
        fewshot_seed: int = 1234,
        builtin_tasks: bool = True,
        threads: int | None = None,
    ) -> None:
        runtime.configure(threads)
        self.builtin_tasks = builtin_tasks
        self.task_specs = [tasks] if isinstance(tasks, str) else list(tasks)
        if not self.task_specs:
            raise EvaluatorError("lm_eval: no tasks given")
        self.batch_size = batch_size
        self.max_length = max_length
        self.limit = _check_limit(limit)
        self._lm: Any = None
        self._lm_key: tuple[int, int] | None = None
        self._requests: dict[str, tuple[int, dict[int, list]]] = {}  # task -> (docs built, ...)

        paths = include_path if include_path is not None else DEFAULT_INCLUDE_PATH
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        self.include_paths = tuple(str(Path(p).resolve()) for p in paths)
        loaded = self._load(self.task_specs)
        self.tasks: dict[str, Any] = loaded["tasks"]
        self.groups: dict[str, Any] = loaded.get("groups", {})
        for task in self.tasks.values():
            _configure_task(task, num_fewshot, gen_max_tokens, fewshot_seed)
        self._produced = {name: _produced_metrics(task) for name, task in self.tasks.items()}
        self.metrics = self._select_metrics(metrics)

    # ------------------------------------------------------------------ loading, once

    def _load(self, specs: list[str]) -> dict[str, Any]:
        manager = _task_manager(self.include_paths, defaults=False)
        if self.builtin_tasks and not all(_known(manager, spec) for spec in specs):
            manager = _task_manager(self.include_paths, defaults=True)
        for spec in specs:
            if not _known(manager, spec):
                where = ", ".join(self.include_paths) or "no include_path"
                builtin = " or lm-eval's built-in tasks" if self.builtin_tasks else ""
                raise EvaluatorError(
                    f"lm_eval task {spec!r}: no task, group or tag of that name in "
                    f"{where}{builtin}, and no such YAML file"
                )
        try:
            return manager.load(specs)
        except EvaluatorError:
            raise
        except Exception as err:  # lm-eval raises bare ValueError/KeyError/... for bad configs
            raise EvaluatorError(
                f"lm_eval tasks {specs}: could not load: {_first_line(err)}"
            ) from err

    def _select_metrics(self, wanted: Sequence[str] | None) -> list[str] | None:
        """Check the requested metrics against what each task produces; None keeps all."""
        if wanted is None:
            return None
        selected = []
        for key in wanted:
            task_part, _, metric = key.rpartition("/")
            targets = [task_part] if task_part else list(self.tasks)
            for task in targets:
                if task in self.groups:
                    selected.append(f"{task}/{metric}")  # group keys exist only after a run
                    continue
                if task not in self.tasks:
                    raise EvaluatorError(f"lm_eval metric {key!r}: task {task!r} is not loaded")
                if metric not in self._produced[task]:
                    raise EvaluatorError(
                        f"lm_eval task {task!r} does not produce metric {metric!r}; "
                        f"it produces {sorted(self._produced[task])}"
                    )
                selected.append(f"{task}/{metric}")
        return selected

    def metric_names(self) -> dict[str, set[str]]:
        """``{task: {"metric,filter", ...}}`` each loaded task produces, known before any call
        (a search checks its objectives against it before the study exists). Groups are left
        out: their keys exist only after a run."""
        return {name: set(produced) for name, produced in self._produced.items()}

    def _selection(self, name: str, limit: int | None, samples: Sequence[int] | None) -> list[int]:
        """The document indices of one task that a call scores, in order."""
        n_docs = len(self.tasks[name].eval_docs)
        if samples is None:
            return list(range(min(limit, n_docs) if limit is not None else n_docs))
        chosen = sorted(set(samples))
        if not chosen:
            raise EvaluatorError(f"lm_eval task {name!r}: samples is empty")
        if chosen[0] < 0 or chosen[-1] >= n_docs:
            bad = chosen[0] if chosen[0] < 0 else chosen[-1]
            raise EvaluatorError(
                f"lm_eval task {name!r}: sample index {bad} out of range "
                f"(the task has {n_docs} documents)"
            )
        return chosen

    def _requests_by_doc(self, name: str, needed: int) -> dict[int, list]:
        """Requests of the task's first ``needed`` documents, grouped by document id.

        Built once (per process) and grown only when a call asks for a later document; any
        selection of documents then reuses them.
        """
        built = self._requests.get(name)
        if built is None or built[0] < needed:
            task = self.tasks[name]
            whole = needed >= len(task.eval_docs)
            with runtime.quiet_bars("lm_eval.api.task"):
                task.build_all_requests(limit=None if whole else needed)
            by_doc: dict[int, list] = defaultdict(list)
            for inst in task.instances:
                by_doc[inst.doc_id].append(inst)
            for doc_requests in by_doc.values():
                doc_requests.sort(key=lambda inst: inst.idx)
            built = (len(task.eval_docs) if whole else needed, by_doc)
            self._requests[name] = built
        return built[1]

    # ------------------------------------------------------------------ scoring, every call

    def evaluate(
        self, model: Any, tokenizer: Any, *, exclude: Sequence[int] = (), **keywords: Any
    ) -> EvalResult:
        """Score the selected documents of every task (``keywords``: ``Selection``'s);
        ``exclude`` leaves out documents a caller scored already (staged evaluation adds items
        to a first look, it does not redo them). A task left with no document is absent from
        the result."""
        return self._timed(model, tokenizer, Selection(**keywords), exclude=exclude)

    def _score(
        self, model: Any, tokenizer: Any, selection: Selection, exclude: Sequence[int] = ()
    ) -> EvalResult:
        samples = selection.samples
        limit = _check_limit(selection.limit) if selection.limit is not None else self.limit
        if samples is not None and limit is not None:
            raise EvaluatorError("lm_eval: give limit or samples, not both")
        skip = set(exclude)
        selections = {
            name: [d for d in self._selection(name, limit, samples) if d not in skip]
            for name in self.tasks
        }
        selections = {name: docs for name, docs in selections.items() if docs}
        if not selections:
            return EvalResult(metrics={})
        lm = self._wrap(model, tokenizer)
        _seed_everything(selection.seed)

        requests: dict[str, dict[int, list]] = {}
        by_type: dict[str, list] = defaultdict(list)
        for name, docs in selections.items():
            by_doc = self._requests_by_doc(name, docs[-1] + 1)
            requests[name] = {doc_id: by_doc[doc_id] for doc_id in docs}
            for doc_requests in requests[name].values():
                for inst in doc_requests:
                    inst.resps, inst.filtered_resps = [], {}  # answers of the previous call
                    by_type[inst.request_type].extend([inst] * inst.repeats)
        try:
            for request_type, batch in by_type.items():
                responses = getattr(lm, request_type)(batch, disable_tqdm=True)
                for inst, response in zip(batch, responses, strict=True):
                    inst.resps.append(response)
        except Exception as err:
            raise EvaluatorRuntimeError(
                f"lm_eval tasks {sorted(self.tasks)}: the model failed: {_first_line(err)}"
            ) from err

        accumulators = {}
        item_scores: dict[str, list[tuple[int, float]]] = {}
        for name, task in self.tasks.items():
            if name not in requests:
                continue
            raw, items = _score_task(task, requests[name])
            accumulators[name] = {"task": task, "raw_metrics": raw, "logged_samples": []}
            item_scores.update({f"{name}/{k}": v for k, v in items.items()})

        from lm_eval.evaluator_utils import _process_results

        results = _process_results(accumulators, self.groups, bootstrap_iters=0)
        metrics = {
            f"{name}/{key}": float(value)
            for name, values in results.metrics.items()
            for key, value in values.items()
            if "," in key and "_stderr," not in key and isinstance(value, (int, float))
        }
        if self.metrics is not None:
            scored = set(requests) | set(self.groups)
            missing = [m for m in self.metrics if m not in metrics and _task_of(m) in scored]
            if missing:
                task = missing[0].partition("/")[0]
                raise EvaluatorError(
                    f"lm_eval task {task!r} produced no {missing[0].partition('/')[2]!r}"
                )
            metrics = {m: metrics[m] for m in self.metrics if m in metrics}
        items = (
            {m: item_scores[m] for m in metrics if m in item_scores} if selection.per_item else {}
        )
        return EvalResult(
            metrics=metrics, items=items, requests=sum(len(batch) for batch in by_type.values())
        )

    def direction(self, metric: str) -> Direction:
        """From the task's ``higher_is_better``; a group's metric takes its tasks' direction."""
        name, _, key = metric.partition("/")
        metric_name = key.partition(",")[0]
        leaves = [name] if name in self.tasks else _group_leaves(self.groups.get(name))
        for leaf in leaves:
            higher = self.tasks[leaf].higher_is_better().get(metric_name)
            if higher is not None:
                return "maximize" if higher else "minimize"
        raise EvaluatorError(f"lm_eval: no direction known for metric {metric!r}")

    def _wrap(self, model: Any, tokenizer: Any) -> Any:
        """One HFLM per (model object, tokenizer); it holds no state derived from weights."""
        key = (id(model), id(tokenizer))
        if self._lm is None or self._lm_key != key:
            from lm_eval.models.huggingface import HFLM

            self._lm = HFLM(
                pretrained=model,
                tokenizer=tokenizer,
                batch_size=self.batch_size,
                max_length=self.max_length,
                device=str(model.device),
            )
            self._lm_key = key
        model.eval()
        return self._lm


# ---------------------------------------------------------------------- helpers


def _task_of(metric: str) -> str:
    return metric.partition("/")[0]


def _check_limit(limit: int | None) -> int | None:
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise EvaluatorError(f"lm_eval: limit must be a positive integer, got {limit!r}")
    return limit


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _known(manager: Any, spec: str) -> bool:
    return spec in manager.task_index or (spec.endswith((".yaml", ".yml")) and Path(spec).is_file())


def _task_manager(include_paths: tuple[str, ...], *, defaults: bool) -> Any:
    key = (include_paths, defaults)
    if key not in _MANAGERS:
        from lm_eval.tasks import TaskManager

        manager = TaskManager(include_path=list(include_paths) or None, include_defaults=defaults)
        # lm-eval 0.4.13 builds every task through this factory; ours resolves data paths
        manager._factory = _task_factory()(meta=manager.metadata)
        _MANAGERS[key] = manager
    return _MANAGERS[key]


def _task_factory() -> type:
    """lm-eval's TaskFactory, resolving ``dataset_kwargs.data_files`` against the YAML's folder.

    Relative paths in a task YAML then mean the same from any working directory, and a missing
    file is reported with the task's name before ``datasets`` tries to load it.
    """
    from lm_eval.tasks._factory import TaskFactory

    class YamlRelativeTaskFactory(TaskFactory):
        def _load_full_config(self, entry: Any, overrides: dict | None = None) -> dict:
            cfg = super()._load_full_config(entry, overrides)
            kwargs = cfg.get("dataset_kwargs")
            if entry.yaml_path and isinstance(kwargs, dict) and "data_files" in kwargs:
                cfg["dataset_kwargs"] = dict(kwargs)
                cfg["dataset_kwargs"]["data_files"] = _resolve_data_files(
                    kwargs["data_files"], Path(entry.yaml_path), cfg.get("task", entry.name)
                )
            return cfg

    return YamlRelativeTaskFactory


def _resolve_data_files(files: Any, yaml_path: Path, task: str) -> Any:
    if isinstance(files, Mapping):
        return {split: _resolve_data_files(f, yaml_path, task) for split, f in files.items()}
    if isinstance(files, (list, tuple)):
        return [_resolve_data_files(f, yaml_path, task) for f in files]
    path = Path(str(files)).expanduser()
    if "://" in str(files) or any(c in str(files) for c in "*?["):
        return files  # URLs and glob patterns are left to `datasets`
    path = path if path.is_absolute() else yaml_path.parent / path
    if not path.is_file():
        raise EvaluatorError(
            f"lm_eval task {task!r}: data file {path} not found (data_files in {yaml_path})"
        )
    return str(path)


def _configure_task(
    task: Any, num_fewshot: int | None, gen_max_tokens: int | None, fewshot_seed: int
) -> None:
    """The per-task overrides ``simple_evaluate`` applies, applied once at load."""
    if num_fewshot is not None and task.get_config("num_fewshot") != 0:
        task.set_config(key="num_fewshot", value=num_fewshot)
    elif task.get_config("num_fewshot") is None:
        task.set_config(key="num_fewshot", value=0)
    if gen_max_tokens is not None and task.get_config("output_type") == "generate_until":
        task.set_config(
            key="generation_kwargs", value={"max_gen_toks": gen_max_tokens}, update=True
        )
    task.set_fewshot_seed(seed=fewshot_seed)


def _produced_metrics(task: Any) -> set[str]:
    filters = task.get_config("filter_list")
    filter_names = [f["name"] for f in filters] if filters else ["none"]
    return {f"{m},{f}" for m in task.aggregation() for f in filter_names}


def _score_task(
    task: Any, requests: dict[int, list]
) -> tuple[dict[tuple[str, str], list], dict[str, list[tuple[int, float]]]]:
    """Filter and score one task's answered requests, as ``lm_eval.evaluator.evaluate`` does.

    ``requests`` maps each scored document id to its requests. Returns the raw per-document
    metric values keyed ``(metric, filter)`` (what lm-eval's aggregation takes) and the
    per-document numeric scores keyed ``"metric,filter"``.
    """
    task._instances = [inst for doc in requests.values() for inst in doc]  # filters read these
    task.apply_filters()
    raw: dict[tuple[str, str], list] = defaultdict(list)
    items: dict[str, list[tuple[int, float]]] = defaultdict(list)
    filter_keys = list(task._instances[0].filtered_resps) if task._instances else []
    for filter_key in filter_keys:
        for doc_id, doc_requests in requests.items():
            scores = task.process_results(
                doc_requests[0].doc, [inst.filtered_resps[filter_key] for inst in doc_requests]
            )
            for metric, value in scores.items():
                raw[(metric, filter_key)].append(value)
                if isinstance(value, (int, float)):
                    items[f"{metric},{filter_key}"].append((doc_id, float(value)))
    return raw, items


def _group_leaves(group: Any) -> list[str]:
    return [t.task_name for t in group.get_all_tasks()] if group is not None else []
