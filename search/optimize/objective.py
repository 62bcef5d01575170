"""One trial: parameters -> merge config -> merged into the live model -> scores -> values.

``TrialRunner`` is the callable handed to ``study.optimize``. It keeps what must live once per
process: the ``Merger`` (open checkpoints, bounded tensor cache), the evaluators, one live model
(rebuilt only when the merged architecture changes, as with passthrough slices) and the
tokenizers. No file is written per trial.

What a trial records (merge config, scores, timings, why it failed) goes into its user
attributes under the names of ``search.attrs``, which status, report and export read back.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import time
from typing import Any

import optuna
import torch

from mergesearch import merging
from mergesearch.search import attrs as A
from mergesearch.search.distributed.budget import INTERRUPTED
from mergesearch.search.distributed.faults import is_disk_full
from mergesearch.search.errors import SpecError, TrialFailed
from mergesearch.search.optimize import attachments, versions
from mergesearch.search.optimize.registry import PRUNERS
from mergesearch.search.optimize.scoring import Scorer
from mergesearch.search.optimize.space import SearchSpace
from mergesearch.search.spec.schema import SearchSpec

log = logging.getLogger(__name__)

DROP_FROM_ARCH_KEY = ("_name_or_path", "name_or_path", "transformers_version", "architectures")


def config_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class LiveModel:
    """One model object whose weights each trial overwrites; rebuilt when the shape changes.

    It lives on ``device`` (a GPU: merged tensors are streamed into it from page-locked host
    buffers while the next ones merge), and the evaluators run where it is.
    """

    def __init__(self, merger: merging.Merger, device: str | torch.device = "cpu"):
        self.merger = merger
        self.device = torch.device(device)
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
            self.model = self.merger.new_model(config, device=self.device)
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
        *,
        spec_version: int = versions.FIRST,
    ):
        self.spec, self.space, self.scorer, self.live = spec, space, scorer, live
        self.baselines = baselines
        self.spec_version = spec_version  # what this process scores under (optimize.versions)
        pruner = PRUNERS[spec.pruner.name]
        self.per_item = pruner.per_item  # the pruner compares per-item scores
        self.stages = spec.pruner.stages if pruner.prunes else (None,)

    def __call__(self, trial: optuna.Trial) -> list[float]:
        try:
            return self._run(trial)
        except KeyboardInterrupt:
            trial.set_user_attr(A.FAIL_REASON, "interrupted")
            raise

    def _run(self, trial: optuna.Trial) -> list[float]:
        trial.set_user_attr(A.SPEC_VERSION, self.spec_version)
        baseline = trial.user_attrs.get(A.BASELINE)
        if baseline is not None:
            data = self.baselines[baseline]
        else:
            params = self.space.suggest(trial)
            trial.set_user_attr(A.METHOD, self.space.method_of(params))
            data = self.space.config(params)
        config = merging.load_merge_config(data, source_name=f"trial {trial.number}")
        text = config.to_yaml()
        key = config_hash(text)
        trial.set_user_attr(A.MERGE_CONFIG, text)
        trial.set_user_attr(A.CONFIG_HASH, key)
        attachments.attach_config(trial, text)  # for optuna-dashboard, which never writes

        earlier = _completed_with_hash(trial.study, key, trial.number, self.spec_version)
        if earlier is not None:  # an identical merge was scored the same way: answer from it
            trial.set_user_attr(A.DUPLICATE_OF, earlier.number)
            trial.set_user_attr(A.ITEMS, 0)  # nothing evaluated for this one
            for name in (A.METRICS, A.MERGE_SECONDS, A.EVAL_SECONDS):
                if name in earlier.user_attrs:
                    trial.set_user_attr(name, earlier.user_attrs[name])
            return list(earlier.values)

        try:
            self.live.merger.plan(config)  # structural problems (paths, shapes) stop the search
        except merging.ConfigError as err:
            trial.set_user_attr(A.FAIL_REASON, str(err))
            raise SpecError(str(err)) from None  # the config is named "trial N" already
        try:
            model, tokenizer, merge_seconds = self.live.merge(config)
        except Exception as err:
            self._fail(trial, "merge", err)
        trial.set_user_attr(A.MERGE_SECONDS, round(merge_seconds, 4))
        return self._evaluate(trial, model, tokenizer, is_baseline=baseline is not None)

    def _evaluate(
        self, trial: optuna.Trial, model: Any, tokenizer: Any, *, is_baseline: bool
    ) -> list[float]:
        seconds, requests = 0.0, 0
        reported: set[int] = set()
        scores = None
        for index, stage in enumerate(self.stages):
            started = time.perf_counter()
            try:
                scores = self.scorer.score(
                    model,
                    tokenizer,
                    "search",
                    stage=stage,
                    per_item=self.per_item,
                    after=scores,
                )
            except SpecError:
                raise
            except Exception as err:
                if isinstance(err, merging.ConfigError):  # bad input: stop the search
                    trial.set_user_attr(A.FAIL_REASON, str(err))
                    raise SpecError(f"trial {trial.number}: evaluator: {err}") from None
                self._fail(trial, "evaluation", err)
            seconds += time.perf_counter() - started
            requests += scores.requests
            final = index == len(self.stages) - 1
            if len(self.stages) > 1:
                if self.per_item:
                    for step, value in self.scorer.item_values(scores.items).items():
                        if step not in reported:
                            trial.report(value, step)
                            reported.add(step)
                else:
                    trial.report(self.scorer.combine(scores.values)[0], index)
            if not final and not is_baseline and trial.should_prune():
                self._record(trial, scores.values, seconds, requests)
                trial.set_user_attr(A.STAGE, stage)
                raise optuna.TrialPruned(f"pruned after {stage} items per task")
        assert scores is not None
        self._record(trial, scores.values, seconds, requests)
        return self.scorer.combine(scores.values)

    @staticmethod
    def _record(
        trial: optuna.Trial, values: dict[str, float], seconds: float, requests: int
    ) -> None:
        trial.set_user_attr(A.METRICS, {name: {"search": v} for name, v in values.items()})
        trial.set_user_attr(A.EVAL_SECONDS, round(seconds, 4))
        trial.set_user_attr(A.ITEMS, requests)

    @staticmethod
    def _fail(trial: optuna.Trial, what: str, err: Exception) -> None:
        if is_disk_full(err):  # not this candidate's fault: stop the search (distributed.faults)
            with contextlib.suppress(Exception):  # the study may be on the full disk too
                trial.set_user_attr(A.FAIL_REASON, INTERRUPTED)  # replaced, not counted
            raise err
        first = (str(err).strip().splitlines() or [""])[0]
        reason = f"{what}: {type(err).__name__}: {first}"
        trial.set_user_attr(A.FAIL_REASON, reason)
        log.warning("trial %d failed: %s", trial.number, reason)
        raise TrialFailed(reason) from err


def _completed_with_hash(
    study: optuna.Study, key: str, number: int, version: int
) -> optuna.trial.FrozenTrial | None:
    """A completed trial of the same config scored under the same spec version: a score of
    another objective (or other sources) never answers for this one."""
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if (
            t.number != number
            and t.user_attrs.get(A.CONFIG_HASH) == key
            and versions.version_of(t) == version
        ):
            return t
    return None
