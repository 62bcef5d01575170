"""A metric name the task does not produce stops the search before the study exists."""

from __future__ import annotations

import pytest
import yaml

from mergesearch.search.cli import main
from tests.helpers.specs import make_spec


def _lm_eval_spec(family, tmp_path, metric: str) -> dict:
    return make_spec(
        family,
        tmp_path,
        objectives=[
            {
                "name": "rev",
                "metric": metric,
                "splits": {"search": {"task": "demo_rev_search", "limit": 2}},
            }
        ],
        evaluators={"lm_eval": {"builtin_tasks": False}},
    )


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("exact_mach,strip", "no metric 'exact_mach,strip' (did you mean 'exact_match,strip'?)"),
        ("exact_match,strp", "no metric 'exact_match,strp' (did you mean 'exact_match,strip'?)"),
    ],
    ids=["metric", "filter"],
)
def test_a_metric_typo_is_one_line_before_any_study(family, tmp_path, capsys, metric, expected):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_lm_eval_spec(family, tmp_path, metric)))
    assert main(["search", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert f"objectives.rev.metric: task 'demo_rev_search' produces {expected}" in err
    assert "it produces: exact_match,strip" in err
    assert not (tmp_path / "study.db").exists()  # nothing was created
