"""The built wheel is the whole program: installed away from the checkout, every command works.

The wheel is built from a copy of the sources that ``pyproject.toml`` names (so stale build
folders in the checkout cannot leak into it), then installed with ``pip --target`` into the
site-packages of a fresh venv made without pip. The fresh venv reaches the dependencies through
a ``.pth`` line that appends the project venv's site-packages: a plain path line makes Python
add the folder but not run the ``.pth`` files inside it, so the project's editable-install
finder (which would map ``mergesearch`` back to the checkout) stays off. Every command then
runs with that venv's interpreter, from a working directory outside the checkout, without
``PYTHONPATH``; the first test proves that ``mergesearch`` really comes from the wheel there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib.metadata import version
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

import mergesearch
from mergesearch import merging
from tests.helpers.tiny_models import load_state, make_llama_family

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
# the repository's top-level folders the packaging maps into the namespace
SOURCE_DIRS = sorted(set(SETUPTOOLS["package-dir"].values()))
BARE_NAMES = ("merging", "search", "evaluators", "configs")
# the project venv's pip builds and installs; the fresh venv has none
PIP = (sys.executable, "-m", "pip")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


def _build_wheel(out: Path) -> Path:
    """``pip wheel --no-build-isolation`` on a copy of what the packaging reads."""
    needed = next(r for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools"))
    minimum = needed.partition(">=")[2]
    if minimum and _version_tuple(version("setuptools")) < _version_tuple(minimum):
        pytest.fail(
            f"the project venv has setuptools {version('setuptools')}, pyproject needs {needed}: "
            f"run {sys.executable} -m pip install -c constraints.txt '{needed}'"
        )
    src = out / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCE_DIRS:
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", PYPROJECT["project"]["readme"]):
        shutil.copy2(REPO / name, src / name)
    subprocess.run(
        [
            *PIP,
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(src),
            "-w",
            str(out / "dist"),
        ],
        check=True,
        capture_output=True,
        text=True,
        env=_clean_env(),
    )
    (wheel,) = (out / "dist").glob("mergesearch-*.whl")
    return wheel


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


class Installed:
    """The wheel installed into a fresh venv; ``run`` executes in ``cwd``, outside the checkout."""

    def __init__(self, root: Path, wheel: Path):
        self.wheel = wheel
        self.cwd = root / "work"
        self.cwd.mkdir()
        venv = root / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        self.python = venv / "bin" / "python"
        self.site = Path(
            subprocess.run(
                [
                    str(self.python),
                    "-c",
                    "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
        )
        subprocess.run(
            [
                *PIP,
                "install",
                "--no-deps",
                "--no-index",
                "-q",
                "--target",
                str(self.site),
                str(wheel),
            ],
            check=True,
            capture_output=True,
            text=True,
            env=_clean_env(),
        )
        (self.site / "zz_project_dependencies.pth").write_text(
            sysconfig.get_paths()["purelib"] + "\n"
        )
        self.env = _clean_env(
            HF_HOME=str(root / "hf"),
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
        )

    def run(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.python), *argv],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def mergesearch(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """The console script pip wrote for the wheel's entry point, run by the fresh venv."""
        return self.run(str(self.site / "bin" / "mergesearch"), *argv, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    return Installed(root, _build_wheel(root))


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}"
    )
    return proc.stdout


def test_the_namespace_comes_from_the_wheel(installed: Installed):
    out = _ok(
        installed.run(
            "-c",
            "import mergesearch, mergesearch.search, mergesearch.merging, mergesearch.evaluators;"
            "print(mergesearch.__version__);"
            "print(mergesearch.__file__); print(mergesearch.merging.__file__);"
            "print(mergesearch.search.__file__); print(mergesearch.evaluators.__file__)",
        )
    )
    found, *files = out.split()
    assert found == mergesearch.__version__
    for file in files:
        assert Path(file).is_relative_to(installed.site), file
        assert not Path(file).is_relative_to(REPO), file


@pytest.mark.parametrize("name", BARE_NAMES)
def test_no_bare_top_level_package_is_installed(installed: Installed, name: str):
    proc = installed.run("-c", f"import {name}")
    assert proc.returncode != 0
    assert f"No module named '{name}'" in proc.stderr


def test_the_wheel_holds_the_namespace_and_every_file_the_program_reads(installed: Installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    top = {n.split("/")[0] for n in names}
    assert top == {"mergesearch", f"mergesearch-{mergesearch.__version__}.dist-info"}
    for package, folder in SETUPTOOLS["package-dir"].items():
        for path in (REPO / folder).rglob("*"):
            if path.is_dir() or "__pycache__" in path.parts:
                continue
            if folder != "configs" and path.suffix != ".py":
                continue  # package data lives in configs/ only
            inside = path.relative_to(REPO / folder).as_posix()
            assert f"{package.replace('.', '/')}/{inside}" in names, f"{folder}/{inside}"


def test_console_script_prints_the_version(installed: Installed):
    assert (
        _ok(installed.mergesearch("--version")).strip() == f"mergesearch {mergesearch.__version__}"
    )


def test_demo_help(installed: Installed):
    assert "--n-trials" in _ok(installed.mergesearch("demo", "--help"))


def test_the_shipped_demo_family_loads_from_the_wheel(installed: Installed):
    out = _ok(
        installed.run(
            "-c",
            "from mergesearch.search.demo.family import shipped_family;"
            "f = shipped_family(0); print(f.base); print(sorted(f.specialists))",
        )
    )
    base, specialists = out.splitlines()
    assert Path(base).is_relative_to(installed.site)
    assert (Path(base) / "model.safetensors").is_file()
    assert specialists == "['rev', 'up']"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> list[Path]:
    return make_llama_family(tmp_path_factory.mktemp("wheel-models"), n_models=3, seed=0)


def ties_config(tiny_models: list[Path], folder: Path) -> Path:
    """A TIES merge of the tiny family, as a YAML file in ``folder``."""
    base, a, b = (str(p) for p in tiny_models)
    config = {
        "merge_method": "ties",
        "base_model": base,
        "models": [
            {"model": a, "parameters": {"weight": 0.6, "density": 0.5}},
            {"model": b, "parameters": {"weight": 0.4, "density": 0.7}},
        ],
        "dtype": "float32",
    }
    path = folder / "ties.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_merge_gives_the_checkouts_tensors(installed: Installed, tiny_models, tmp_path):
    path = ties_config(tiny_models, tmp_path)
    wheel_out = tmp_path / "from-wheel"
    _ok(
        installed.mergesearch("merge", str(path), str(wheel_out), "--threads", "1", "--no-progress")
    )
    checkout_out = merging.run_merge(path, tmp_path / "from-checkout", threads=1, progress=False)
    ours, theirs = load_state(wheel_out), load_state(checkout_out)
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert ours[name].equal(tensor), name


def test_three_trial_search_on_the_demo_tasks(installed: Installed, tiny_models):
    """No ``include_path``: the demo task files must come from the wheel's package data."""
    base, a, b = (str(p) for p in tiny_models)
    spec = {
        "name": "wheel-search",
        "threads": 1,
        "sources": {"base": base, "models": {"a": a, "b": b}},
        "methods": ["ties", "linear"],
        "parameters": {"weight": {"low": 0.1, "high": 1.0}, "density": {"low": 0.3, "high": 1.0}},
        "objectives": [
            {
                "name": "rev",
                "metric": "exact_match,strip",
                "splits": {"search": {"task": "demo_rev_search", "limit": 3}},
            }
        ],
        "evaluators": {"lm_eval": {"batch_size": 4, "builtin_tasks": False}},
        "sampler": {"name": "random", "seed": 0},
        "budget": {"trials": 3},
    }
    path = installed.cwd / "search.yaml"
    path.write_text(yaml.safe_dump(spec))
    _ok(installed.mergesearch("search", str(path), "--no-progress", timeout=600))
    db = installed.cwd / "results" / "wheel-search" / "study.db"
    study = optuna.load_study(study_name="wheel-search", storage=f"sqlite:///{db}")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3
    assert all(0.0 <= t.value <= 1.0 for t in done)


# ------------------------------------------------------------------ the core install alone


def _closure(requirements: list[str]) -> list:
    """The installed distributions ``requirements`` need, transitively (extras they name
    followed, environment markers evaluated): what ``pip install`` of them would bring."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, object] = {}
    todo = [(Requirement(r), ()) for r in requirements]
    while todo:
        req, _ = todo.pop()
        name = canonicalize_name(req.name)
        if name in found:
            continue
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            continue  # an optional dependency the project venv lacks: the core has it neither
        found[name] = dist
        for text in dist.requires or ():
            sub = Requirement(text)
            extras = ("", *req.extras)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                todo.append((sub, ()))
    return list(found.values())


def _core_site(root: Path) -> Path:
    """A folder holding (as links) only the distributions the core dependencies bring."""
    site = root / "core-site"
    site.mkdir()
    for dist in _closure(PYPROJECT["project"]["dependencies"]):
        for top in sorted({Path(str(f)).parts[0] for f in dist.files or ()} - {".."}):
            target = Path(dist.locate_file(top))
            if target.exists() and not (site / top).exists():
                (site / top).symlink_to(target)
    return site


@pytest.fixture(scope="module")
def core_only(tmp_path_factory, installed) -> Installed:
    """The same wheel in a fresh venv that reaches only the core dependencies."""
    root = tmp_path_factory.mktemp("core")
    core = Installed(root, installed.wheel)
    (core.site / "zz_project_dependencies.pth").write_text(f"{_core_site(root)}\n")
    return core


def test_the_core_lacks_every_extra(core_only: Installed):
    proc = core_only.run(
        "-c",
        "import importlib.util as u; print([m for m in "
        "('optuna', 'lm_eval', 'plotly', 'matplotlib', 'optuna_dashboard', 'psycopg2', 'scipy')"
        " if u.find_spec(m)])",
    )
    assert _ok(proc).strip() == "[]"


def test_merge_runs_on_the_core_dependencies_alone(core_only: Installed, tiny_models, tmp_path):
    path = ties_config(tiny_models, tmp_path)
    out = tmp_path / "core-merge"
    _ok(core_only.mergesearch("merge", str(path), str(out), "--threads", "1", "--no-progress"))
    theirs = load_state(merging.run_merge(path, tmp_path / "checkout", threads=1, progress=False))
    ours = load_state(out)
    assert ours.keys() == theirs.keys() and all(ours[n].equal(t) for n, t in theirs.items())
    assert (out / "mergekit_config.yml").is_file() and (out / "README.md").is_file()


@pytest.mark.parametrize(
    ("argv", "extra"),
    [(("status", "results/x"), "search"), (("search", "spec.yaml"), "search")],
    ids=["status", "search"],
)
def test_a_command_of_an_extra_says_what_to_install(core_only: Installed, argv, extra):
    proc = core_only.mergesearch(*argv)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert f"pip install 'mergesearch[{extra}]'" in line


def test_every_optional_module_names_an_extra_of_pyproject():
    from mergesearch.search.cli.extras import EXTRAS

    extras = PYPROJECT["project"]["optional-dependencies"]
    assert set(EXTRAS.values()) <= set(extras)
    assert {"search", "eval", "report", "dashboard", "postgres", "demo", "all"} <= set(extras)
    assert "mergesearch[search,eval,report]" in extras["demo"]  # the README's first command
