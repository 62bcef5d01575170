"""Search specs for tests, as plain dicts: ``make_spec`` runs on real tiny models scored by the
probe, ``base_spec`` only has to validate (its sources are Hub ids nothing downloads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROBE = "tests.helpers.probe:score"


def make_spec(paths: dict[str, str], tmp_path: Path, **changes: Any) -> dict[str, Any]:
    """A small valid spec over ``paths`` scored by the probe; ``changes`` replace keys."""
    spec: dict[str, Any] = {
        "name": "t",
        "storage": f"sqlite:///{tmp_path / 'study.db'}",
        "sources": {
            "base": paths["base"],
            "models": {k: v for k, v in paths.items() if k != "base"},
        },
        "methods": ["ties", "linear"],
        "parameters": {
            "weight": {"low": 0.1, "high": 1.0},
            "density": {"low": 0.2, "high": 1.0},
            "lambda": {"low": 0.5, "high": 1.5},
        },
        "objectives": [
            {
                "name": "probe",
                "evaluator": "python",
                "metric": "probe/score",
                "options": {"callable": PROBE},
                "splits": {"search": {}},
            }
        ],
        "sampler": {"name": "random", "seed": 0},
        "budget": {"trials": 8},
    }
    spec.update(changes)
    return spec


def base_spec(**changes: Any) -> dict[str, Any]:
    """A minimal valid spec over Hub ids (for parsing and search-space tests)."""
    spec: dict[str, Any] = {
        "name": "s",
        "sources": {"base": "org/base", "models": {"a": "org/a", "b": "org/b"}},
        "methods": ["ties"],
        "parameters": {"weight": {"low": 0.1, "high": 1.0}, "density": 0.5},
        "objectives": [{"task": "arc_easy", "metric": "acc,none"}],
    }
    spec.update(changes)
    return spec
