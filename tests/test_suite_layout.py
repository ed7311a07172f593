"""The suite's own layout: the e2e deployments tests share one server, so they must run on one
xdist worker. pytest 9 with pytest-xdist 3.8 silently split such a group across workers."""

from __future__ import annotations

import os

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
