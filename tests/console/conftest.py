"""Real nodes for the console tests: a node with the three roles' keys, and a headless Chromium.

The browser is Debian's Chromium (``/usr/bin/chromium``), driven by Playwright's own driver; the
tests that need it skip, saying why, only on a machine that has no Chromium at all (CI installs
it: ``.ci/run``). Chromium starts with a fresh profile in the test's temporary directory and with
everything that would reach the network beyond the node turned off.
"""

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service.server_process import CofferServer

keys = {"reader": "reader-key-console-0001", "operator": "operator-key-console-01", "admin": "admin-key-console-00001"}
chromium_path = "/usr/bin/chromium"
chromium_arguments = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="package")
def keyed_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CofferServer]:
    """A node with a key of each role (COFFER_API_KEYS), shared by the console tests."""
    node = CofferServer(
        tmp_path_factory.mktemp("console") / "data",
        {"COFFER_API_KEYS": ",".join(f"{role}:{key}" for role, key in keys.items())},
    )
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")  # Playwright's loop runs while it lives: only the browser tests' module
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Chromium browser context with a fresh profile (Playwright's sync API)."""
    if shutil.which(chromium_path) is None and not Path(chromium_path).exists():
        pytest.skip(f"no Chromium on this machine ({chromium_path}): apt-get install chromium (CI does, in .ci/run)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=chromium_path,
            args=chromium_arguments,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()
