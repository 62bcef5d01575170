"""Which optional extra a missing import calls for: a command that needs a package the install
left out says, in one line, what to install.

``pip install mergesearch`` is the merge engine alone (``mergesearch merge``, ``upload``); each
extra of ``pyproject.toml`` adds the packages of one job. This table maps the modules those
packages provide to their extra; ``tests/test_packaging.py`` checks it against ``pyproject.toml``.
"""

from __future__ import annotations

EXTRAS: dict[str, str] = {
    "optuna": "search",
    "cmaes": "search",
    "scipy": "search",
    "pydantic": "search",
    "sqlalchemy": "search",
    "lm_eval": "eval",
    "accelerate": "eval",
    "datasets": "eval",
    "plotly": "report",
    "matplotlib": "report",
    "optuna_dashboard": "dashboard",
    "psycopg2": "postgres",
}


def missing_extra(err: BaseException) -> str | None:
    """The one-line advice for an import of an optional package that failed, else ``None``."""
    if not isinstance(err, ModuleNotFoundError) or not err.name:
        return None
    extra = EXTRAS.get(err.name.split(".")[0])
    if extra is None:
        return None
    return (
        f"this command needs {err.name.split('.')[0]!r}, part of the [{extra}] extra: "
        f"pip install 'mergesearch[{extra}]' (or 'mergesearch[all]')"
    )
