"""One trial: parameters -> merge config -> merged into the live model -> scores -> values.

``TrialRunner`` is the callable handed to ``study.optimize``. It keeps what must live once per
process: the ``Merger`` (open checkpoints, bounded tensor cache), the evaluators, one live model
(rebuilt only when the merged architecture changes, as with passthrough slices) and the
tokenizers. No file is written per trial.

Per-trial user attributes (stable names; status, report and export read them):
``merge_config`` (YAML), ``config_hash``, ``method``, ``baseline`` (baselines only), ``metrics``
({objective: {split: value}}), ``merge_seconds``, ``eval_seconds``, ``duplicate_of`` (answered
from an identical earlier trial), ``stage`` (items per task when pruned), ``fail_reason``.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import time
from typing import Any

import optuna
import yaml

from mergesearch import merging
from mergesearch.search.errors import SpecError, TrialFailed
from mergesearch.search.optimize.samplers import BASELINE_ATTR
from mergesearch.search.optimize.scoring import Scorer
from mergesearch.search.optimize.space import SearchSpace
from mergesearch.search.spec.schema import SearchSpec

log = logging.getLogger(__name__)

DROP_FROM_ARCH_KEY = ("_name_or_path", "name_or_path", "transformers_version", "architectures")


def config_yaml(config: merging.MergeConfig) -> str:
    """The mergekit YAML of a validated config, seed included when it matters."""
    data = config.to_dict()
    if config.seed is not None:
        data.setdefault("seed", config.seed)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def config_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class LiveModel:
    """One model object whose weights each trial overwrites; rebuilt when the shape changes."""

    def __init__(self, merger: merging.Merger):
        self.merger = merger
        self.model: Any = None
        self._arch: str | None = None
        self._tokenizers: dict[str, Any] = {}

    def prepare(self, config: merging.MergeConfig) -> tuple[Any, Any]:
        out = self.merger.output_config(config).to_dict()
        arch = json.dumps(
            {k: v for k, v in out.items() if k not in DROP_FROM_ARCH_KEY},
            sort_keys=True,
            default=str,
        )
        if arch != self._arch:
            self.model, self._arch = None, None
            gc.collect()  # free the old weights before allocating the new model
            self.model = self.merger.new_model(config)
            self._arch = arch
        tok_key = config.tokenizer_source or config.base_model or config.model_refs[0]
        if tok_key not in self._tokenizers:
            self._tokenizers[tok_key] = self.merger.load_tokenizer(config)
        return self.model, self._tokenizers[tok_key]

    def merge(self, config: merging.MergeConfig) -> tuple[Any, Any, float]:
        model, tokenizer = self.prepare(config)
        started = time.perf_counter()
        self.merger.merge_into(config, model)
        return model, tokenizer, time.perf_counter() - started


class TrialRunner:
    """The objective: ``values = runner(trial)``."""

    def __init__(
        self,
        spec: SearchSpec,
        space: SearchSpace,
        scorer: Scorer,
        live: LiveModel,
        baselines: dict[str, dict[str, Any]],
    ):
        self.spec, self.space, self.scorer, self.live = spec, space, scorer, live
        self.baselines = baselines
        self.wilcoxon = spec.pruner.name == "wilcoxon"
        self.stages = spec.pruner.stages if spec.pruner.name != "none" else (None,)

    def __call__(self, trial: optuna.Trial) -> list[float]:
        try:
            return self._run(trial)
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")
            raise

    def _run(self, trial: optuna.Trial) -> list[float]:
        baseline = trial.user_attrs.get(BASELINE_ATTR)
        if baseline is not None:
            data = self.baselines[baseline]
        else:
            params = self.space.suggest(trial)
            trial.set_user_attr("method", self.space.method_of(params))
            data = self.space.config(params)
        config = merging.load_merge_config(data, source_name=f"trial {trial.number}")
        text = config_yaml(config)
        key = config_hash(text)
        trial.set_user_attr("merge_config", text)
        trial.set_user_attr("config_hash", key)

        earlier = _completed_with_hash(trial.study, key, trial.number)
        if earlier is not None:  # an identical merge was scored: answer from the study
            trial.set_user_attr("duplicate_of", earlier.number)
            for name in ("metrics", "merge_seconds", "eval_seconds"):
                if name in earlier.user_attrs:
                    trial.set_user_attr(name, earlier.user_attrs[name])
            return list(earlier.values)

        try:
            self.live.merger.plan(config)  # structural problems (paths, shapes) stop the search
        except merging.ConfigError as err:
            trial.set_user_attr("fail_reason", str(err))
            raise SpecError(str(err)) from None  # the config is named "trial N" already
        try:
            model, tokenizer, merge_seconds = self.live.merge(config)
        except Exception as err:
            self._fail(trial, "merge", err)
        trial.set_user_attr("merge_seconds", round(merge_seconds, 4))
        return self._evaluate(trial, model, tokenizer, is_baseline=baseline is not None)

    def _evaluate(
        self, trial: optuna.Trial, model: Any, tokenizer: Any, *, is_baseline: bool
    ) -> list[float]:
        seconds = 0.0
        reported: set[int] = set()
        for index, stage in enumerate(self.stages):
            started = time.perf_counter()
            try:
                scores = self.scorer.score(
                    model, tokenizer, "search", stage=stage, per_item=self.wilcoxon
                )
            except SpecError:
                raise
            except Exception as err:
                if getattr(err, "exit_code", None) == 2:
                    trial.set_user_attr("fail_reason", str(err))
                    raise SpecError(f"trial {trial.number}: evaluator: {err}") from None
                self._fail(trial, "evaluation", err)
            seconds += time.perf_counter() - started
            final = index == len(self.stages) - 1
            if len(self.stages) > 1:
                if self.wilcoxon:
                    for step, value in self.scorer.item_values(scores.items).items():
                        if step not in reported:
                            trial.report(value, step)
                            reported.add(step)
                else:
                    trial.report(self.scorer.combine(scores.values)[0], index)
            if not final and not is_baseline and trial.should_prune():
                self._record(trial, scores.values, seconds)
                trial.set_user_attr("stage", stage)
                raise optuna.TrialPruned(f"pruned after {stage} items per task")
        self._record(trial, scores.values, seconds)
        return self.scorer.combine(scores.values)

    @staticmethod
    def _record(trial: optuna.Trial, values: dict[str, float], seconds: float) -> None:
        trial.set_user_attr("metrics", {name: {"search": v} for name, v in values.items()})
        trial.set_user_attr("eval_seconds", round(seconds, 4))

    @staticmethod
    def _fail(trial: optuna.Trial, what: str, err: Exception) -> None:
        first = (str(err).strip().splitlines() or [""])[0]
        reason = f"{what}: {type(err).__name__}: {first}"
        trial.set_user_attr("fail_reason", reason)
        log.warning("trial %d failed: %s", trial.number, reason)
        raise TrialFailed(reason) from err


def _completed_with_hash(
    study: optuna.Study, key: str, number: int
) -> optuna.trial.FrozenTrial | None:
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.number != number and t.user_attrs.get("config_hash") == key:
            return t
    return None
