"""A bad setting is one line naming its variable; values (maybe secrets) are never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from canary.cli.flower_info import flower_lines
from canary.settings import ConfigError, Settings, get_settings, reset_settings_cache


def test_each_bad_setting_is_one_line_without_any_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANARY_FLOWER_BASIC_AUTH", "ops:flower-secret-1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:db-secret-2@db/x")
    monkeypatch.setenv("CANARY_FLOWER_PORT", "not-a-port")
    monkeypatch.setenv("CANARY_MAX_ATTEMPTS", "0")
    reset_settings_cache()
    try:
        with pytest.raises(ConfigError) as caught:
            get_settings()
    finally:
        reset_settings_cache()
    assert caught.value.lines == [
        "CANARY_MAX_ATTEMPTS: Input should be greater than or equal to 1",
        "CANARY_FLOWER_PORT: Input should be a valid integer, unable to parse string as an integer",
    ]
    assert caught.value.__suppress_context__  # the pydantic error (with inputs) is not shown
    assert "secret" not in str(caught.value)


def test_flower_lines_say_how_to_log_in_without_the_password(tmp_path: Path) -> None:
    [generated] = flower_lines(Settings(flower_port=5600, home=tmp_path))
    assert generated.startswith(
        f"Flower: http://127.0.0.1:5600 (log in as canary with the password in "
        f"{tmp_path / 'flower-password'}, made for this stack;"
    )
    [line] = flower_lines(Settings(flower_basic_auth="ops:pw-1,audit:pw-2"))  # type: ignore[arg-type]
    assert "log in as ops, audit" in line and "pw-" not in line
