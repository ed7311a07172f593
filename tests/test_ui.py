"""What a user does in the Prefect UI, in a real browser (Debian's chromium driven by Playwright).

On the README recipe's server and process worker (the `recipe` fixture, shared with
tests/test_deployments.py): open the ``pipeline-local`` deployment, start a custom run from its
form with the saved queue and storage blocks picked and the items typed in, wait for the run,
and read the batch's dashboard artifact as the UI shows it.

Without chromium the test is skipped, unless ``TQFLOW_BROWSER_REQUIRED=1`` (set by ``.ci/run``,
which installs chromium when it is missing): then it fails. Screenshots are written to
``tests/screenshots/`` (not committed); README.md shows one.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Iterator

import pytest
from playwright.sync_api import expect

from tests.support.helpers import REPO

# pytest-timeout counts fixture setup: the first test to need the session's `recipe` (its own
# server, deploy and a 200-item run, 250 s on a quiet machine) pays for it, whichever that is.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("deployments"),
    pytest.mark.timeout(900),
]

SCREENSHOTS = REPO / "tests" / "screenshots"
#: Root IDs as CAVE gives them: above 2**53, where a JavaScript number would round them.
ROOT_IDS = [864691135000000001, 864691135000000003, 864691135123456789]
BATCH = "ui-form"
#: Flags for headless chromium on a machine without a display, GPU or network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Milliseconds a page element may take to appear on a busy machine.
UI_TIMEOUT_MS = 60_000


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    message = "no chromium on PATH: install Debian's (apt-get install chromium) to run the UI test"
    if os.environ.get("TQFLOW_BROWSER_REQUIRED") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def page(tmp_path) -> Iterator:
    """A chromium page on its own profile that reaches 127.0.0.1 only: the UI's other requests
    (block logos on GitHub and a CDN) are aborted."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()

    def only_this_machine(route) -> None:
        url = route.request.url
        if re.match(r"https?://127\.0\.0\.1[:/]", url) or url.startswith("data:"):
            route.continue_()
        else:
            route.abort()

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=executable,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1100},
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        context.route("**/*", only_this_machine)
        try:
            yield context.new_page()
        finally:
            context.close()


def ui_url(env: dict[str, str], path: str) -> str:
    return env["PREFECT_API_URL"].removesuffix("/api") + path


def form_field(page, name: str):
    """The run form's field for parameter ``name``."""
    label = page.locator(
        ".schema-form-property__label", has_text=re.compile(rf"^{name}( \(Optional\))?$")
    )
    return page.locator(".schema-form-property").filter(has=label).first


def pick_saved_block(page, parameter: str, block_type: str, name: str) -> None:
    """Choose the saved block ``name`` of ``block_type`` in the field's picker. The picker does
    not open on a synthetic click in headless chromium; focus and ArrowDown open it."""
    field = form_field(page, parameter)
    field.get_by_role("button", name=block_type, exact=True).click()
    field.locator(".p-select-button__control").focus()
    page.keyboard.press("ArrowDown")
    page.get_by_role("option", name=name, exact=True).click()


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def latest_run(env: dict[str, str], deployment: str, started_after: float):
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    # A client of the recipe's server by its URL: the process's settings stay the session's.
    with SyncPrefectClient(env["PREFECT_API_URL"]) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment]))
        )
    runs = [r for r in runs if r.created and r.created.timestamp() >= started_after]
    return max(runs, key=lambda r: r.created) if runs else None


def submitted(page, env: dict[str, str], started_after: float, timeout: float = 300) -> None:
    """Until the form's Submit has created a run; fails at once with what the form says if it
    refused the parameters. The bound is generous: the server is busy on a loaded machine."""
    deadline = time.monotonic() + timeout
    while latest_run(env, "pipeline-local", started_after) is None:
        refused = [m for m in page.locator(".p-label__message").all_inner_texts() if m.strip()]
        if refused or time.monotonic() > deadline:
            shot(page, "run-form-submitted")
            raise AssertionError(f"Submit created no run; the form says: {refused}")
        time.sleep(1)


def wait_for_final_state(env, deployment: str, started_after: float, timeout: float = 600):
    deadline = time.monotonic() + timeout
    run = None
    while time.monotonic() < deadline:
        run = latest_run(env, deployment, started_after)
        if run is not None and run.state is not None and run.state.is_final():
            return run
        time.sleep(1)
    raise AssertionError(f"no final state within {timeout} s; last seen: {run and run.state}")


def test_a_run_started_from_the_deployment_form_fills_the_batch_dashboard(recipe, page):
    assert recipe["RECIPE_EXIT"] == "0", Path(recipe["RECIPE_LOG"]).read_text()[-4000:]
    started_after = time.time() - 5

    # Deployments -> pipeline-local -> Run -> Custom run
    page.goto(ui_url(recipe, "/deployments"))
    page.get_by_role("link", name="pipeline-local", exact=True).first.click()
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run", exact=True).click()
    page.wait_for_url(re.compile(r".*/deployments/deployment/[^/]+/run"))

    pick_saved_block(page, "queue", "LocalTaskQueue", "tqflow")
    pick_saved_block(page, "storage", "CloudFilesStorage", "tqflow-local")
    form_field(page, "batch").locator("textarea, input").first.fill(BATCH)
    items = form_field(page, "items")
    items.get_by_role("button", name="list", exact=True).click()
    for root_id in ROOT_IDS:
        items.get_by_role("button", name="Add item").click()
        items.locator("textarea").last.fill(str(root_id))
        items.locator("textarea").last.blur()  # leave the input, as a user moving on does
        # the form has taken the value when its highlighted view shows it
        expect(items.locator("code").last).to_have_text(str(root_id))
    shot(page, "run-form")
    page.get_by_role("button", name="Submit").click()
    submitted(page, recipe, started_after)

    run = wait_for_final_state(recipe, "pipeline-local", started_after)
    assert run.state.is_completed(), f"{run.state.type}: {run.state.message}"
    # Exact root IDs reached the tasks: one output per ID, named by its key.
    outputs = Path(recipe["TQFLOW_DATA"]) / BATCH / "outputs"
    assert sorted(p.stem for p in outputs.glob("*.json")) == sorted(map(str, ROOT_IDS))

    # Artifacts -> <batch>-dashboard -> its latest version, as a user opens it.
    page.goto(ui_url(recipe, f"/artifacts/key/{BATCH}-dashboard"))
    page.locator("a[href*='/artifacts/artifact/']").first.click()
    page.get_by_role("heading", name=f"Batch {BATCH} (finished)").wait_for()
    table = page.locator("table").first
    headers = [h.strip() for h in table.locator("th").all_inner_texts()]
    cells = [c.strip() for c in table.locator("td").all_inner_texts()]
    counts = dict(zip(headers, cells, strict=True))
    assert counts["done"] == str(len(ROOT_IDS)), counts
    assert counts["total"] == str(len(ROOT_IDS)), counts
    assert (counts["dead-lettered"], counts["failed attempts"]) == ("0", "0"), counts
    plot = page.get_by_role("img", name="throughput")
    assert plot.evaluate("img => img.complete && img.naturalWidth > 0"), "the plot did not load"
    shot(page, "dashboard")
