"""Fixtures of the search tests: the tiny sources (built in a second, nothing downloaded), the
probe reset around every test, and finished studies shared by the report and export tests."""

from __future__ import annotations

import pytest

from tests.helpers import probe
from tests.helpers.fake_study import shared_study
from tests.helpers.tiny_models import make_named_family


@pytest.fixture(scope="session")
def family(tmp_path_factory) -> dict[str, str]:
    return make_named_family(tmp_path_factory.mktemp("family"))


@pytest.fixture(autouse=True)
def _probe_reset():
    probe.reset()
    yield
    probe.reset()


# finished studies on the tiny models (single-objective and Pareto), shared by the report and
# export tests


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return shared_study(tmp_path_factory)


@pytest.fixture(scope="module")
def pareto(tmp_path_factory):
    return shared_study(tmp_path_factory, pareto=True)
