"""The browser page every test here drives: headless Chromium, and no JavaScript error."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page

from tests.browser_support import chromium_page


@pytest.fixture
def page() -> Iterator[Page]:
    with chromium_page(1280, 900) as page:
        page.set_default_timeout(10_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        yield page
        assert not errors, f"JavaScript errors on the page: {errors}"
