"""mergesearch's merge engine: mergekit-compatible merges on CPU, streamed from safetensors.

Usable alone, like mergekit: ``run_merge(config, out_dir)`` for one merge to disk, ``Merger`` for
repeated merges into a live model (the search). Imports nothing from ``search`` or
``evaluators``, nor Optuna or lm-eval.
"""

from mergesearch.merging.config import MergeConfig, load_merge_config
from mergesearch.merging.engine import Merger, MergeStats, NonFiniteError, run_merge, tensor_seed
from mergesearch.merging.errors import ConfigError, MergeError, MergeRuntimeError
from mergesearch.merging.methods import METHODS, BaseRole, MergeMethod, get_method

__all__ = [
    "METHODS",
    "BaseRole",
    "ConfigError",
    "MergeConfig",
    "MergeError",
    "MergeMethod",
    "MergeRuntimeError",
    "MergeStats",
    "Merger",
    "NonFiniteError",
    "get_method",
    "load_merge_config",
    "run_merge",
    "tensor_seed",
]
