"""Browser tests: pages of the HTTP app driven in headless Chromium (Playwright)."""
