"""The lm_eval evaluator against direct computations, offline, on tiny live models."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from mergesearch import evaluators
from mergesearch.evaluators import EvaluatorError
from mergesearch.search.demo.tasks import exact_match_yaml
from tests.evaluators.conftest import tiny_model
from tests.evaluators.direct import continuation_logprob, greedy

MAX_GEN = 6

# what every local test task shares: its name and the JSONL file next to the YAML
TASK_HEADER = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: data/{name}.jsonl
test_split: test
"""

GEN_YAML = (
    TASK_HEADER
    + """\
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
"""
    + exact_match_yaml(MAX_GEN)
)

MC_YAML = (
    TASK_HEADER
    + """\
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
)


def _words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("abcdefgh") for _ in range(rng.randint(2, 6))) for _ in range(n)]


def _write_task(folder: Path, name: str, template: str, records: list[dict]) -> None:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "data" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / f"{name}.yaml").write_text(template.format(name=name))


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory, model, tokenizer) -> Path:
    """A generation task whose answers are the tiny model's own greedy outputs on every other
    item (so exact match is neither 0 nor 1), and a 4-way multiple-choice task."""
    folder = tmp_path_factory.mktemp("tasks")
    gen = []
    for i, word in enumerate(_words(24, seed=1)):
        prompt = f"Q: echo {word} A:"
        own = greedy(model, tokenizer, prompt, MAX_GEN)
        gen.append({"prompt": prompt, "answer": own if i % 2 == 0 else word})
    _write_task(folder, "t_gen", GEN_YAML, gen)
    mc = []
    for i, word in enumerate(_words(20, seed=2)):
        choices = [word, word[::-1] + "x", word.upper(), "zz" + word]
        mc.append({"prompt": f"Q: pick {word} A:", "choices": choices, "label": i % 4})
    _write_task(folder, "t_mc", MC_YAML, mc)
    return folder


def _records(task_dir: Path, name: str) -> list[dict]:
    lines = (task_dir / "data" / f"{name}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _direct_em(model, tokenizer, records):
    return [float(greedy(model, tokenizer, r["prompt"], MAX_GEN) == r["answer"]) for r in records]


def _direct_acc(model, tokenizer, records):
    scores = []
    for r in records:
        lls = [continuation_logprob(model, tokenizer, r["prompt"], " " + c) for c in r["choices"]]
        scores.append(float(max(range(len(lls)), key=lls.__getitem__) == r["label"]))
    return scores


@pytest.fixture(scope="module")
def evaluator(task_dir, tmp_path_factory):
    # from another working directory: data_files must resolve against the YAML's folder
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("elsewhere"))
    try:
        return evaluators.get(
            "lm_eval", tasks=["t_gen", "t_mc"], include_path=task_dir, batch_size=5
        )
    finally:
        os.chdir(cwd)


def test_exact_match_and_accuracy_equal_direct_computation(evaluator, task_dir, model, tokenizer):
    result = evaluator.evaluate(model, tokenizer, per_item=True)

    em = _direct_em(model, tokenizer, _records(task_dir, "t_gen"))
    acc = _direct_acc(model, tokenizer, _records(task_dir, "t_mc"))
    assert 0 < sum(em) < len(em)  # the check means something
    assert result.metrics["t_gen/exact_match,strip"] == pytest.approx(sum(em) / len(em))
    assert result.items["t_gen/exact_match,strip"] == list(enumerate(em))
    assert result.metrics["t_mc/acc,none"] == pytest.approx(sum(acc) / len(acc))
    assert result.items["t_mc/acc,none"] == list(enumerate(acc))
    assert evaluator.direction("t_gen/exact_match,strip") == "maximize"
    assert evaluator.direction("t_mc/acc,none") == "maximize"


def test_network_variables_are_set_by_the_evaluator(evaluator):
    import huggingface_hub.constants

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        assert os.environ[name] == "1"
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True


def test_weights_swapped_in_place_are_scored_fresh(evaluator, task_dir, tokenizer):
    live = tiny_model(tokenizer, seed=0)
    first = evaluator.evaluate(live, tokenizer, per_item=True)

    other = tiny_model(tokenizer, seed=7)
    live.load_state_dict(other.state_dict())  # same object, new weights
    second = evaluator.evaluate(live, tokenizer, per_item=True)

    em = _direct_em(other, tokenizer, _records(task_dir, "t_gen"))
    acc = _direct_acc(other, tokenizer, _records(task_dir, "t_mc"))
    assert second.items["t_gen/exact_match,strip"] == list(enumerate(em))
    assert second.items["t_mc/acc,none"] == list(enumerate(acc))
    assert second.metrics != first.metrics


def test_limit_and_samples_pick_documents(evaluator, model, tokenizer):
    limited = evaluator.evaluate(model, tokenizer, limit=4, per_item=True)
    assert [i for i, _ in limited.items["t_gen/exact_match,strip"]] == [0, 1, 2, 3]

    picked = evaluator.evaluate(model, tokenizer, samples=[9, 2, 5], per_item=True)
    full = dict(
        evaluator.evaluate(model, tokenizer, per_item=True).items["t_gen/exact_match,strip"]
    )
    assert picked.items["t_gen/exact_match,strip"] == [(i, full[i]) for i in (2, 5, 9)]


def test_requests_count_what_the_model_was_asked(evaluator, model, tokenizer):
    # a generation item is one request; a 4-way multiple-choice item is four loglikelihoods
    whole = evaluator.evaluate(model, tokenizer)
    assert whole.requests == 24 * 1 + 20 * 4
    limited = evaluator.evaluate(model, tokenizer, limit=3)
    assert limited.requests == 3 * 1 + 3 * 4


def test_excluded_documents_are_not_scored_again(evaluator, model, tokenizer):
    full = evaluator.evaluate(model, tokenizer, per_item=True)
    rest = evaluator.evaluate(model, tokenizer, exclude=range(10), per_item=True)
    assert rest.requests == 14 * 1 + 10 * 4
    key = "t_gen/exact_match,strip"
    assert rest.items[key] == full.items[key][10:]
    nothing = evaluator.evaluate(model, tokenizer, limit=5, exclude=range(5))
    assert nothing.metrics == {} and nothing.requests == 0


def test_metric_selection(task_dir):
    ev = evaluators.get(
        "lm_eval",
        tasks=["t_gen", "t_mc"],
        include_path=task_dir,
        metrics=["t_gen/exact_match,strip", "t_mc/acc,none"],
    )
    assert ev.metrics == ["t_gen/exact_match,strip", "t_mc/acc,none"]


def _one_line_error(match: str, **options) -> str:
    with pytest.raises(EvaluatorError, match=match) as info:
        evaluators.get("lm_eval", **options)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_task_is_one_line_naming_it(task_dir):
    # builtin_tasks=False spares the test indexing lm-eval's 15k tasks (the same code path)
    _one_line_error(
        "'no_such_task_xyz'",
        tasks=["no_such_task_xyz"],
        include_path=task_dir,
        builtin_tasks=False,
    )


def test_missing_data_file_is_one_line_naming_the_task(task_dir, tmp_path):
    (tmp_path / "t_lost.yaml").write_text(GEN_YAML.format(name="t_lost"))
    message = _one_line_error("'t_lost'", tasks=["t_lost"], include_path=tmp_path)
    assert "t_lost.jsonl" in message


def test_metric_the_task_does_not_produce_is_one_line_naming_the_task(task_dir):
    message = _one_line_error(
        "'t_mc'", tasks=["t_gen", "t_mc"], include_path=task_dir, metrics=["exact_match,strip"]
    )
    assert "acc,none" in message  # says what the task does produce


def test_committed_demo_tasks_load_by_tag_from_any_directory(
    model, tokenizer, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    ev = evaluators.get("lm_eval", tasks=["demo_search"], builtin_tasks=False)
    result = ev.evaluate(model, tokenizer, limit=3, per_item=True)
    assert set(result.metrics) == {
        "demo_rev_search/exact_match,strip",
        "demo_up_search/exact_match,strip",
    }
    assert [i for i, _ in result.items["demo_up_search/exact_match,strip"]] == [0, 1, 2]
