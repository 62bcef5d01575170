"""mergesearch's search layer: a search spec becomes an Optuna study of merge candidates.

Public API: ``run_search(spec_or_path, **overrides)`` (see ``search.study``) and
``load_spec(path)``. Both are imported lazily so that ``mergesearch merge`` does not pay for
Optuna and lm-eval.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_spec", "run_search"]


def __getattr__(name: str) -> Any:
    if name == "run_search":
        from mergesearch.search.optimize.study import run_search

        return run_search
    if name == "load_spec":
        from mergesearch.search.spec.load import load_spec

        return load_spec
    raise AttributeError(f"module 'search' has no attribute {name!r}")
