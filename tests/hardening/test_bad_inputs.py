"""Bad input to every command: exit 2 (or 1), one line on stderr naming what is wrong and what to
do, no traceback, and nothing written.

Each case is a function that prepares its inputs under ``tmp_path`` and returns the command
line. The runner snapshots the folders a command could write to, runs ``search.cli.main`` in
this process (a traceback would surface as an exception here) and checks the snapshot after.
``test_real_processes`` runs one case of each command again as a real ``mergesearch`` process,
for the exit code and the stderr a shell sees.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from mergesearch.search.cli import main
from tests.hardening.helpers import digests
from tests.helpers.hostile_yaml import alias_bomb, deep_nesting
from tests.helpers.specs import make_spec

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Ctx:
    """What a case may use: the fixtures, a scratch folder and monkeypatch."""

    models: dict[str, Path]
    study: Path
    tmp: Path
    monkeypatch: pytest.MonkeyPatch

    def file(self, name: str, data: Any) -> str:
        path = self.tmp / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return str(path)

    def merge(self, data: Any, *flags: str) -> list[str]:
        return [
            "merge",
            self.file("merge.yaml", data),
            str(self.tmp / "out"),
            "--no-progress",
            *flags,
        ]

    def ties(self, *names: str, **params: Any) -> dict[str, Any]:
        return {
            "models": [
                {
                    "model": str(self.models[n]),
                    "parameters": {"weight": 0.5, "density": 0.5, **params},
                }
                for n in names
            ],
            "merge_method": "ties",
            "base_model": str(self.models["base"]),
        }

    def family(self, **models: str) -> dict[str, str]:
        return {
            "base": str(self.models["base"]),
            **{k: str(self.models[v]) for k, v in models.items()},
        }

    def search(
        self, *flags: str, models: dict[str, str] | None = None, **changes: Any
    ) -> list[str]:
        paths = self.family(**({"a": "a", "b": "b"} if models is None else models))
        spec = make_spec(paths, self.tmp / "results", **changes)
        return ["search", self.file("spec.yaml", spec), "--no-progress", *flags]


@dataclass
class Case:
    make: Callable[[Ctx], list[str]]
    code: int
    expected: tuple[str, ...]
    writes: bool = False  # the command may leave a record (a study with the failed trial)
    absent: tuple[str, ...] = ()  # what must not be in the error line (a password)


CASES: dict[str, Case] = {}
SECRET = "s3cretPASSWORDsentinel"  # a storage password that must never be printed


def case(
    name: str, code: int, *expected: str, writes: bool = False, absent: tuple[str, ...] = ()
) -> Callable:
    def register(make: Callable[[Ctx], list[str]]) -> Callable[[Ctx], list[str]]:
        CASES[name] = Case(make, code, expected, writes, absent)
        return make

    return register


def _sources_here(c: Ctx) -> Path:
    """The issue's layout: models in ``./models/{base,a,b}``, ``cfg.yaml`` in the working
    directory (the scratch folder); returns the models folder."""
    models = c.tmp / "models"
    for name in ("base", "a", "b"):
        shutil.copytree(c.models[name], models / name)
    data = {
        "models": [{"model": f"models/{n}", "parameters": {"weight": 0.5}} for n in ("a", "b")],
        "merge_method": "linear",
    }
    c.file("cfg.yaml", data)
    return models


# ---------------------------------------------------------------------------- merge


@case("merge: malformed YAML", 2, "merge.yaml", "malformed YAML at line 4")
def _(c: Ctx) -> list[str]:
    return c.merge("merge_method: ties\nmodels:\n  - model: [a\n    parameters: {}\n")


@case("merge: models is a string", 2, "merge.yaml", "models")
def _(c: Ctx) -> list[str]:
    return c.merge({**c.ties("a"), "models": str(c.models["a"])})


@case("merge: unknown top-level key", 2, "merge.yaml", "did you mean 'merge_method'")
def _(c: Ctx) -> list[str]:
    data = c.ties("a", "b")
    data["merge_methd"] = data.pop("merge_method")
    return c.merge(data)


@case("merge: a weight beyond float32", 1, "NaN or inf", "check weights")
def _(c: Ctx) -> list[str]:
    return c.merge(c.ties("a", "b", weight=1e39))


@case("merge: empty model list", 2, "models", "non-empty list")
def _(c: Ctx) -> list[str]:
    return c.merge({**c.ties("a"), "models": []})


@case("merge: same model twice", 2, "twice", "list each model once")
def _(c: Ctx) -> list[str]:
    return c.merge(c.ties("a", "a"))


@case("merge: llama with mistral", 2, "architecture", "llama", "mistral")
def _(c: Ctx) -> list[str]:
    return c.merge(c.ties("a", "mistral"))


@case(
    "merge: index names a missing shard",
    2,
    "model.safetensors.index.json",
    "missing",
    "re-download",
)
def _(c: Ctx) -> list[str]:
    return c.merge(c.ties("a", "missing_shard"))


@case("merge: NaN weights in a source", 2, "NaN", "down_proj", "/nan")
def _(c: Ctx) -> list[str]:
    return c.merge(c.ties("a", "nan"))


@case("merge: folder without config.json", 2, "no_config", "no config.json")
def _(c: Ctx) -> list[str]:
    return c.merge(c.ties("a", "no_config"))


@case("merge: Hub id while offline", 2, "someorg/not-cached", "offline", "local folder")
def _(c: Ctx) -> list[str]:
    from huggingface_hub import constants

    c.monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    c.monkeypatch.setenv("HF_HUB_CACHE", str(c.tmp / "empty-hub-cache"))
    c.monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    c.monkeypatch.setattr(constants, "HF_HUB_CACHE", str(c.tmp / "empty-hub-cache"))
    data = c.ties("a")
    data["models"].append({"model": "someorg/not-cached", "parameters": {"weight": 0.5}})
    return c.merge(data)


@case("merge: pickle without opt-in", 2, "pickled", "--allow-pickle", "safetensors")
def _(c: Ctx) -> list[str]:
    return c.merge(c.ties("a", "pickled"))


@case("merge: config file does not exist", 2, "nowhere.yaml")
def _(c: Ctx) -> list[str]:
    return ["merge", str(c.tmp / "nowhere.yaml"), str(c.tmp / "out")]


@case("merge: bad --out-shard-size", 2, "--out-shard-size", "'5X'")
def _(c: Ctx) -> list[str]:
    return c.merge(c.ties("a", "b"), "--out-shard-size", "5X")


@case("merge: --threads 0", 2, "--threads", "0")
def _(c: Ctx) -> list[str]:
    return c.merge(c.ties("a", "b"), "--threads", "0")


@case("merge: output inside a source model", 2, "inside source model")
def _(c: Ctx) -> list[str]:
    return ["merge", c.file("merge.yaml", c.ties("a", "b")), str(c.models["b"] / "merged")]


@case("merge: --overwrite onto the working directory", 2, "is the working directory", "never")
def _(c: Ctx) -> list[str]:
    _sources_here(c)
    return ["merge", "cfg.yaml", ".", "--overwrite", "--no-progress"]


@case("merge: --overwrite onto the folder of the sources", 2, "contains source model", "never")
def _(c: Ctx) -> list[str]:
    _sources_here(c)
    return ["merge", "cfg.yaml", "models", "--overwrite", "--no-progress"]


@case("merge: --overwrite onto a source model", 2, "is source model 'models/a'")
def _(c: Ctx) -> list[str]:
    _sources_here(c)
    return ["merge", "cfg.yaml", "models/a", "--overwrite", "--no-progress"]


@case("merge: --overwrite onto the config file", 2, "is the config file")
def _(c: Ctx) -> list[str]:
    _sources_here(c)
    return ["merge", "cfg.yaml", "cfg.yaml", "--overwrite", "--no-progress"]


@case("merge: --overwrite onto a file of the user", 2, "notes.txt", "is a file, not a folder")
def _(c: Ctx) -> list[str]:
    c.file("notes.txt", "mine\n")
    return [*c.merge(c.ties("a", "b"))[:2], str(c.tmp / "notes.txt"), "--overwrite"]


@case("merge: --overwrite onto the home folder", 2, "is your home folder")
def _(c: Ctx) -> list[str]:
    home = c.tmp / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine\n")
    c.monkeypatch.setenv("HOME", str(home))
    return [*c.merge(c.ties("a", "b"))[:2], str(home), "--overwrite", "--no-progress"]


@case("merge: checkpoint header names the wrong dtype", 2, "stored as torch.int32", "re-save")
def _(c: Ctx) -> list[str]:
    return c.merge(c.ties("a", "lying_dtype"))


@case("merge: duplicate key", 2, "merge.yaml", "'merge_method' appears twice", "first at line")
def _(c: Ctx) -> list[str]:
    text = yaml.safe_dump(c.ties("a", "b"), sort_keys=False)
    return c.merge(
        text.replace("merge_method: ties\n", "merge_method: ties\nmerge_method: dare_ties\n")
    )


@case("merge: YAML alias bomb", 2, "merge.yaml", "alias bomb")
def _(c: Ctx) -> list[str]:
    return c.merge(alias_bomb())


@case("merge: 100k-deep nesting", 2, "merge.yaml", "nested deeper than")
def _(c: Ctx) -> list[str]:
    return c.merge(deep_nesting())


@case("merge: binary file as config", 2, "merge.yaml", "not UTF-8")
def _(c: Ctx) -> list[str]:
    argv = c.merge("placeholder")
    (c.tmp / "merge.yaml").write_bytes(bytes(range(256)) * 4)
    return argv


@case("merge: config far larger than any config", 2, "merge.yaml", "at most")
def _(c: Ctx) -> list[str]:
    return c.merge("# padding\n" * 200_000)


# ---------------------------------------------------------------------------- search


@case("search: malformed YAML", 2, "spec.yaml", "malformed YAML at line 3")
def _(c: Ctx) -> list[str]:
    return ["search", c.file("spec.yaml", "name: x\nsources: {models: [a\n")]


@case("search: wrong type", 2, "spec.yaml", "budget.trials", "many")
def _(c: Ctx) -> list[str]:
    return c.search(budget={"trials": "many"})


@case("search: unknown key", 2, "spec.yaml", "did you mean 'objectives'")
def _(c: Ctx) -> list[str]:
    argv = c.search()
    spec = yaml.safe_load(Path(argv[1]).read_text())
    spec["objectivs"] = spec.pop("objectives")
    c.file("spec.yaml", spec)
    return argv


@case("search: empty model list", 2, "sources.models", "at least one model")
def _(c: Ctx) -> list[str]:
    return c.search(models={})


@case("search: the same model twice", 2, "sources", "'a' and 'b' are the same model")
def _(c: Ctx) -> list[str]:
    return c.search(models={"a": "a", "b": "a"})


@case("search: different hidden sizes", 2, "sources:", "different shapes")
def _(c: Ctx) -> list[str]:
    return c.search(models={"a": "a", "w": "wide"})


@case("search: different vocabulary sizes", 2, "vocabulary sizes", "tokenizer_source")
def _(c: Ctx) -> list[str]:
    return c.search(models={"a": "a", "v": "vocab"})


@case("search: truncated safetensors source", 2, "truncated safetensors", "re-download")
def _(c: Ctx) -> list[str]:
    return c.search(models={"a": "a", "t": "truncated"})


@case("search: empty range", 2, "parameters.weight", "low 0.9 > high 0.1")
def _(c: Ctx) -> list[str]:
    return c.search(parameters={"weight": {"low": 0.9, "high": 0.1}})


# Only the first evaluation shows which metrics an evaluator returns: the study keeps that
# trial, failed with the reason, and the corrected spec resumes it.
@case("search: metric the evaluator does not produce", 2, "probe/nope", "probe/score", writes=True)
def _(c: Ctx) -> list[str]:
    argv = c.search()
    spec = yaml.safe_load(Path(argv[1]).read_text())
    spec["objectives"][0]["metric"] = "probe/nope"
    c.file("spec.yaml", spec)
    return argv


@case("search: storage cannot connect", 2, "127.0.0.1:9", "cannot open")
def _(c: Ctx) -> list[str]:
    return c.search("--storage", "postgresql+psycopg2://u:p@127.0.0.1:9/db")


@case("search: unknown storage kind", 2, "unknown kind 'sqlit'", "sqlite:///PATH")
def _(c: Ctx) -> list[str]:
    return c.search("--storage", "sqlit:///x.db")


@case("search: bad --timeout", 2, "timeout", "'soon'")
def _(c: Ctx) -> list[str]:
    return c.search("--timeout", "soon")


@case("search: --n-trials 0", 2, "trials", "0")
def _(c: Ctx) -> list[str]:
    return c.search("--n-trials", "0")


@case("search: unknown method", 2, "did you mean 'ties'")
def _(c: Ctx) -> list[str]:
    return c.search(methods=["tiess"])


@case("search: spec file does not exist", 2, "no such search spec file")
def _(c: Ctx) -> list[str]:
    return ["search", str(c.tmp / "missing.yaml")]


@case("search: density range outside (0, 1]", 2, "parameters.density.low", "outside (0, 1]")
def _(c: Ctx) -> list[str]:
    return c.search(parameters={"weight": 0.5, "density": {"low": 0.0, "high": 1.0}})


@case("search: density per model above 1", 2, "parameters.density.a", "outside (0, 1]")
def _(c: Ctx) -> list[str]:
    return c.search(parameters={"weight": 0.5, "density": {"a": 1.5, "b": 0.5}})


@case("search: objective weight .nan", 2, "objectives.0.weight", "finite")
def _(c: Ctx) -> list[str]:
    argv = c.search()
    text = Path(argv[1]).read_text()
    Path(argv[1]).write_text(text.replace("name: probe", "name: probe\n  weight: .nan", 1))
    return argv


@case("search: lambda high 1e308", 2, "parameters.lambda.high", "overflows float32")
def _(c: Ctx) -> list[str]:
    return c.search(
        parameters={"weight": 0.5, "density": 0.5, "lambda": {"low": 1.0, "high": 1e308}}
    )


@case("search: layer_groups beyond the layers", 2, "granularity.layer_groups", "at most")
def _(c: Ctx) -> list[str]:
    return c.search(granularity={"layer_groups": 1000})


@case("search: filter matching no tensor", 2, "filters[0]", "'no_such_module'", "matches no")
def _(c: Ctx) -> list[str]:
    return c.search(granularity={"filters": ["no_such_module"]})


@case("search: duplicate key", 2, "spec.yaml", "'budget' appears twice")
def _(c: Ctx) -> list[str]:
    argv = c.search()
    Path(argv[1]).write_text(Path(argv[1]).read_text() + "budget: {trials: 3}\n")
    return argv


@case("search: YAML alias bomb", 2, "spec.yaml", "alias bomb")
def _(c: Ctx) -> list[str]:
    return ["search", c.file("spec.yaml", alias_bomb())]


@case("search: 100k-deep nesting", 2, "spec.yaml", "nested deeper than")
def _(c: Ctx) -> list[str]:
    return ["search", c.file("spec.yaml", deep_nesting())]


@case("search: non-UTF-8 spec", 2, "spec.yaml", "not UTF-8", "line 2")
def _(c: Ctx) -> list[str]:
    (c.tmp / "spec.yaml").write_bytes("name: t\nsources: caf\xe9\n".encode("latin-1"))
    return ["search", str(c.tmp / "spec.yaml")]


@case("search: working directory where results cannot be made", 2, "cannot create", "--storage")
def _(c: Ctx) -> list[str]:
    (c.tmp / "results").write_text("a file where the results folder would go\n")
    argv = c.search()
    spec = yaml.safe_load(Path(argv[1]).read_text())
    del spec["storage"]  # the default: results/<study>/study.db under the working directory
    c.file("spec.yaml", spec)
    return argv


@case(
    "search: storage password is never printed",
    2,
    "u:***@127.0.0.1:9",
    "cannot open",
    absent=(SECRET,),
)
def _(c: Ctx) -> list[str]:
    return c.search("--storage", f"postgresql+psycopg2://u:{SECRET}@127.0.0.1:9/db")


class _Always:
    def __contains__(self, _call: object) -> bool:
        return True


@case("search: every trial fails", 1, "all 8 trial(s) failed", "probe exploded", writes=True)
def _(c: Ctx) -> list[str]:
    from tests.helpers import probe

    c.monkeypatch.setattr(probe, "FAIL_ON_CALLS", _Always())
    return c.search()


# ---------------------------------------------------------------------------- status, report


@case("status: study name that does not exist", 2, "no study named 'nope'", "fake")
def _(c: Ctx) -> list[str]:
    return ["status", str(c.study), "--study", "nope"]


@case("status: no such results folder", 2, "no such results folder")
def _(c: Ctx) -> list[str]:
    return ["status", str(c.tmp / "results" / "missing")]


@case("status: a file that is not a study", 2, "notes.db", "not a database")
def _(c: Ctx) -> list[str]:
    return ["status", c.file("notes.db", "just text, not SQLite\n")]


@case("status: a database file that does not exist", 2, "new.db", "no such study file")
def _(c: Ctx) -> list[str]:
    return ["status", f"sqlite:///{c.tmp / 'new.db'}"]


@case("status: an empty study.db", 2, "study.db", "empty file")
def _(c: Ctx) -> list[str]:
    (c.tmp / "results").mkdir()
    (c.tmp / "results" / "study.db").write_bytes(b"")
    return ["status", str(c.tmp / "results")]


@case("status: storage password is never printed", 2, "u:***@127.0.0.1:9", absent=(SECRET,))
def _(c: Ctx) -> list[str]:
    return ["status", f"postgresql+psycopg2://u:{SECRET}@127.0.0.1:9/db"]


@case("report: a database file that does not exist", 2, "new.db", "no such study file")
def _(c: Ctx) -> list[str]:
    return ["report", f"sqlite:///{c.tmp / 'new.db'}"]


@case("dashboard: an empty study.db", 2, "study.db", "empty file")
def _(c: Ctx) -> list[str]:
    (c.tmp / "study.db").write_bytes(b"")
    return ["dashboard", str(c.tmp / "study.db")]


@case("report: study name that does not exist", 2, "no study named 'fak'", "fake")
def _(c: Ctx) -> list[str]:
    return ["report", str(c.study), "--study", "fak", "--out", str(c.tmp / "report")]


@case("report: --top 0", 2, "--top 0", "1 or more")
def _(c: Ctx) -> list[str]:
    return ["report", str(c.study), "--top", "0", "--out", str(c.tmp / "report")]


@case("report: --out is a file", 2, "notes.txt", "not a folder")
def _(c: Ctx) -> list[str]:
    return ["report", str(c.study), "--out", c.file("notes.txt", "mine\n")]


# ---------------------------------------------------------------------------- export


@case("export: study name that does not exist", 2, "no study named 'nope'")
def _(c: Ctx) -> list[str]:
    return ["export", str(c.study), "--study", "nope", "--out", str(c.tmp / "best")]


@case("export: trial number that does not exist", 2, "no trial 999")
def _(c: Ctx) -> list[str]:
    return ["export", str(c.study), "--trial", "999", "--out", str(c.tmp / "best")]


@case("export: trial that did not finish", 2, "is FAIL")
def _(c: Ctx) -> list[str]:
    return ["export", str(c.study), "--trial", "7", "--out", str(c.tmp / "best")]


@case("export: output inside a source model", 2, "inside source model")
def _(c: Ctx) -> list[str]:
    return ["export", str(c.study), "--out", str(c.models["base"] / "best"), "--no-progress"]


@case("export: --out a source model, --overwrite", 2, "is source model")
def _(c: Ctx) -> list[str]:
    return ["export", str(c.study), "--out", str(c.models["a"]), "--overwrite", "--no-progress"]


@case("export: --out the folder of the sources, --overwrite", 2, "contains source model")
def _(c: Ctx) -> list[str]:
    out = c.models["a"].parent
    return ["export", str(c.study), "--out", str(out), "--overwrite", "--no-progress"]


@case("export: --out the results folder, --overwrite", 2, "is the study's results folder")
def _(c: Ctx) -> list[str]:
    return ["export", str(c.study), "--out", str(c.study), "--overwrite", "--no-progress"]


@case("export: --out the working directory, --overwrite", 2, "is the working directory")
def _(c: Ctx) -> list[str]:
    return ["export", str(c.study), "--out", ".", "--overwrite", "--no-progress"]


@case("export: an empty study.db", 2, "study.db", "empty file")
def _(c: Ctx) -> list[str]:
    (c.tmp / "study.db").write_bytes(b"")
    return ["export", str(c.tmp / "study.db"), "--out", str(c.tmp / "best")]


@case("export: bad --out-shard-size", 2, "--out-shard-size", "must be positive")
def _(c: Ctx) -> list[str]:
    out = ["--out", str(c.tmp / "best"), "--no-progress"]
    return ["export", str(c.study), "--out-shard-size", "0", *out]


# ---------------------------------------------------------------------------- upload


def _model_dir(c: Ctx) -> str:
    return str(c.models["a"])


@case("upload: not a model folder", 2, "not a model folder", "mergesearch export")
def _(c: Ctx) -> list[str]:
    (c.tmp / "stuff").mkdir()
    return ["upload", str(c.tmp / "stuff"), "me/merged"]


@case("upload: repo id without owner", 2, "give OWNER/NAME")
def _(c: Ctx) -> list[str]:
    c.monkeypatch.setenv("HF_TOKEN", "hf_x")
    return ["upload", _model_dir(c), "merged"]


@case("upload: no token", 2, "no Hugging Face token", "HF_TOKEN")
def _(c: Ctx) -> list[str]:
    from huggingface_hub import constants

    c.monkeypatch.delenv("HF_TOKEN", raising=False)
    c.monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    c.monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(c.tmp / "no-token"))
    c.monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return ["upload", _model_dir(c), "me/merged"]


@case("upload: offline", 2, "HF_HUB_OFFLINE", "unset")
def _(c: Ctx) -> list[str]:
    from huggingface_hub import constants

    c.monkeypatch.setenv("HF_TOKEN", "hf_x")
    c.monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return ["upload", _model_dir(c), "me/merged"]


@case("upload: Hub unreachable", 1, "cannot reach the Hub", "127.0.0.1:9")
def _(c: Ctx) -> list[str]:
    from huggingface_hub import constants

    c.monkeypatch.setenv("HF_TOKEN", "hf_x")
    c.monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    c.monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    return ["upload", _model_dir(c), "me/merged"]


# ---------------------------------------------------------------------------- demo


@case("demo: --n-trials 0", 2, "--n-trials", "0")
def _(c: Ctx) -> list[str]:
    return ["demo", "--n-trials", "0", "--storage", f"sqlite:///{c.tmp / 'demo.db'}"]


@case("demo: --threads 0", 2, "--threads", "0")
def _(c: Ctx) -> list[str]:
    return ["demo", "--threads", "0", "--storage", f"sqlite:///{c.tmp / 'demo.db'}"]


@case("demo: unknown storage kind", 2, "unknown kind 'nope'")
def _(c: Ctx) -> list[str]:
    return ["demo", "--storage", "nope://x", "--fresh"]


@case("demo: rebuild onto the working directory", 2, "is the working directory", "never")
def _(c: Ctx) -> list[str]:
    here = c.tmp / "seed0"  # the family of seed 0 would be built in <out>/seed0
    here.mkdir()
    (here / "notes.txt").write_text("mine\n")
    c.monkeypatch.chdir(here)
    return ["demo", "build", "--out", str(c.tmp), "--force"]


@case("demo: rebuild onto a folder that holds no family", 2, "no demo family", "--out")
def _(c: Ctx) -> list[str]:
    (c.tmp / "mine" / "seed0").mkdir(parents=True)
    (c.tmp / "mine" / "seed0" / "thesis.tex").write_text("mine\n")
    return ["demo", "build", "--out", str(c.tmp / "mine")]


# ---------------------------------------------------------------------------- the runner


def _watched(c: Ctx) -> list[Path]:
    return [c.tmp, c.study, c.models["base"].parent.parent]


def _snapshot(folders: list[Path]) -> dict[Path, dict[str, str]]:
    """Every file's checksum: a refused command changed no byte of a source, config or study."""
    return {f: digests(f) for f in folders}


@pytest.fixture
def ctx(models, study, tmp_path, monkeypatch) -> Ctx:
    monkeypatch.chdir(tmp_path)  # relative default paths (results/...) land in the scratch folder
    return Ctx(models, study, tmp_path, monkeypatch)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, ctx, capsys):
    spec = CASES[name]
    argv = spec.make(ctx)
    before = _snapshot(_watched(ctx))
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == spec.code, err
    assert err.startswith(f"mergesearch {argv[0]}: error: "), err
    assert "\n" not in err and "Traceback" not in err, err
    for text in spec.expected:
        assert text in err, f"{text!r} not in {err!r}"
    for text in spec.absent:
        assert text not in err, f"{text!r} in {err!r}"
    if not spec.writes:
        assert _snapshot(_watched(ctx)) == before, "the refused command wrote files"


def test_there_are_enough_cases():
    commands = {name.split(":")[0] for name in CASES}
    assert commands == {
        "merge",
        "search",
        "status",
        "report",
        "export",
        "upload",
        "demo",
        "dashboard",
    }
    assert len(CASES) >= 88


# one light and one heavy command each way: a process costs seconds of imports
REAL = [
    "merge: NaN weights in a source",
    "search: unknown key",
    "upload: not a model folder",
]


def test_real_processes(models, study, tmp_path, monkeypatch):
    """The same refusals from a real process: exit code 2, exactly one line, no traceback;
    with ``--debug`` the traceback is there."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in REAL:
        scratch = tmp_path / name.split(":")[0]
        scratch.mkdir()
        argv = CASES[name].make(Ctx(models, study, scratch, monkeypatch))
        proc = subprocess.run(
            [sys.executable, "-m", "mergesearch", *argv],
            capture_output=True,
            text=True,
            cwd=scratch,
            env=env,
            timeout=300,
        )
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (name, proc.stderr)
        assert len(lines) == 1 and "Traceback" not in proc.stderr, (name, proc.stderr)
    debug = subprocess.run(
        [sys.executable, "-m", "mergesearch", "--debug", *argv],
        capture_output=True,
        text=True,
        cwd=scratch,
        env=env,
        timeout=300,
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr
