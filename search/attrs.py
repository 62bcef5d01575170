"""Every attribute name a study or its trials carry: the study's vocabulary, defined once.

The study is the truth: status, report, export, the dashboard and resumed or parallel workers
read back what the search wrote, by these names. Stored studies depend on them, so a name never
changes. Every room of ``search`` imports this module (it imports nothing) instead of spelling a
name as a literal: a typo is then an ``AttributeError``, not a silently missing value.
"""

from __future__ import annotations

# --- trial user attributes (written by the optimizer, read by every room) ----------------------
MERGE_CONFIG = "merge_config"  # the trial's mergekit YAML: export rebuilds the model from it
CONFIG_HASH = "config_hash"  # hash of the merge config: identical merges are answered once
METHOD = "method"  # the merge method of the trial
BASELINE = "baseline"  # on baseline trials only: which source (or "average") it stands for
METRICS = "metrics"  # {objective: {split: value}}
MERGE_SECONDS = "merge_seconds"
EVAL_SECONDS = "eval_seconds"
ITEMS = "items"  # evaluator requests the trial spent
DUPLICATE_OF = "duplicate_of"  # number of the identical earlier trial that answered this one
STAGE = "stage"  # items per task when the trial was pruned
FAIL_REASON = "fail_reason"  # one line: why the trial failed (or "interrupted")
WORKER = "worker"  # host:pid of the process that ran (or runs) the trial
WORKER_PROCESS = "worker_process"  # host, machine id, pid, start time: liveness lookups
SPEC_VERSION = "spec_version"  # the study's spec version the trial ran under (absent: 1)

# --- trial system attributes -------------------------------------------------------------------
PORTFOLIO_METHOD = "portfolio_method"  # the method the portfolio sampler chose for the trial
RETRY_HISTORY = "retry_history"  # Optuna's: numbers of the trials a retried trial replaces
FAILED_TRIAL = "failed_trial"  # Optuna's: the number of the trial a retry replaces
FIXED_PARAMS = "fixed_params"  # Optuna's: the parameters an enqueued trial was given

# --- study user attributes (written once when the study is created, except where noted) -------
SPEC = "spec"  # the search spec as YAML
SOURCES = "sources"  # {source name: path or Hub id}
SPACE = "space"  # fingerprint of the search space: a resume with another space is refused
METHOD_PARAMS = "method_params"  # {method: [the parameters it reads]}
OBJECTIVES = "objectives"  # [{name, direction, weight, ...}]
COMBINE = "combine"  # "weighted_sum" or "pareto"
HELDOUT = "heldout"  # {trial number: {split: {objective: value}, CONFIG_HASH: ...}}, grows
PER_ITEM = "per_item"  # in a held-out split entry: {objective: [[document id, score], ...]}
WORKERS_JOINED = "workers_joined"  # processes that have joined the study, grows
SPEC_VERSIONS = "spec_versions"  # [{number, first_trial, spec, fingerprint}], grows on a change
SAMPLER = "sampler"  # the sampler the search runs (``auto`` resolved), for reports and cards
