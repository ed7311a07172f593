"""The suite's own layout: the e2e deployments tests share one server, so they must run on one
xdist worker. pytest 9 with pytest-xdist 3.8 silently split such a group across workers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.mark.skipif("PYTEST_XDIST_WORKER" not in os.environ, reason="checks the xdist grouping")
def test_xdist_groups_reach_the_workers_as_groups(request):
    # `make test` runs --dist loadgroup: the worker sees each grouped test's node id with its
    # group suffix, which is what keeps the group on one worker.
    from tests import test_deployments

    assert any(m.name == "xdist_group" for m in test_deployments.pytestmark)
    if request.config.getoption("dist") == "loadgroup":
        items = [i for i in request.session.items if "test_deployments.py" in i.nodeid]
        assert items and all(i.nodeid.endswith("@deployments") for i in items)


def test_tests_point_prefect_at_another_server_only_through_the_helper():
    # Prefect's events and log workers keep the API of the moment they start: a test that
    # switches servers with temporary_settings alone leaves later tests' events going to a
    # server that is gone (tests.support.helpers.prefect_settings drains them).
    tests = Path(__file__).resolve().parent
    helper = tests / "support" / "helpers.py"
    offenders = [
        str(path.relative_to(tests))
        for path in tests.rglob("*.py")
        if path not in (helper, Path(__file__).resolve())
        and "temporary_settings(" in path.read_text()
    ]
    assert offenders == []
