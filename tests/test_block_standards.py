"""Every tqflow block reads well in the Prefect UI's catalogue: Prefect's own standard suite
(description, documentation URL, a described field each, a code example that loads a saved
block) on each of them."""

from __future__ import annotations

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import HttpUrl

from blocks import CAVECredentials, CloudFilesStorage, LocalTaskQueue, SQSTaskQueue


class TestBlockStandards(BlockStandardTestSuite):
    @pytest.fixture(
        params=[LocalTaskQueue, SQSTaskQueue, CloudFilesStorage, CAVECredentials],
        ids=lambda block: block.__name__,
    )
    def block(self, request):
        return request.param

    def test_has_a_valid_image(self, block):
        # Prefect's version downloads the logo; tests send no traffic off this machine, so
        # this one checks that the logo is an https URL the UI can show.
        assert block._logo_url is not None, f"{block.__name__} has no _logo_url"
        assert HttpUrl(str(block._logo_url)).scheme == "https"
