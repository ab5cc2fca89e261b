"""Validation of job requests: each bad field is named in a clear message."""

from __future__ import annotations

import pytest

from canary.settings import Settings
from gateway.job_requests import InvalidJob, validate_request

SETTINGS = Settings(versions=["v1", "v2"], max_side=1024)
GOOD = {"prompt": "a cat", "model_version": "v1", "width": 64, "height": 64}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompt": ""}, "prompt: String should have at least 1 character"),
        ({"prompt": "   "}, "prompt: String should have at least 1 character"),
        ({"prompt": "x" * 2001}, "prompt: longer than 2000 characters"),
        ({"width": 100}, "width: must be a multiple of 8, got 100"),
        ({"height": 32}, "height: must be between 64 and 1024"),
        ({"width": 4096}, "width: must be between 64 and 1024"),
        ({"width": "wide"}, "width: Input should be a valid integer"),
        ({"steps": 0}, "steps: Input should be greater than or equal to 1"),
        ({"steps": 151}, "steps: at most 150"),
        ({"guidance": float("nan")}, "guidance: Input should be a finite number"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
        ({"seed": 2**64}, "seed: Input should be less than or equal to"),
        ({"model_version": "v9"}, "model_version: unknown version 'v9' (configured: v1, v2)"),
        ({"colour": "red"}, "colour: unknown field"),
        ({"prompt": "a\x00b"}, "prompt: Value error, must not contain NUL"),
        ({"user_id": "\ud800"}, "user_id: Input should be a valid string"),
        ({"negative_prompt": "a\ud800"}, "negative_prompt: Input should be a valid string"),
        # only zero-width and format characters, a variation selector, a combining mark
        ({"prompt": "\u200b\u200c\u200d\u2060\ufeff"}, "prompt: Value error, prompt must have"),
        ({"prompt": "\ufe0f\u0301\u00a0\u3000"}, "prompt: Value error, prompt must have a"),
    ],
)
def test_bad_field_is_named(change: dict, message: str) -> None:
    with pytest.raises(InvalidJob) as caught:
        validate_request({**GOOD, **change}, SETTINGS)
    assert any(e.startswith(message) for e in caught.value.errors), caught.value.errors


def test_missing_fields_and_non_object() -> None:
    with pytest.raises(InvalidJob) as caught:
        validate_request({"width": 64}, SETTINGS)
    assert caught.value.errors == ["prompt: Field required"]
    with pytest.raises(InvalidJob, match="request must be an object, not list"):
        validate_request(["a cat"], SETTINGS)


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(InvalidJob) as caught:
        validate_request({**GOOD, "width": 100, "height": 12, "model_version": "zz"}, SETTINGS)
    assert len(caught.value.errors) == 3


def test_good_request_keeps_what_was_given_and_leaves_the_rest_to_the_version() -> None:
    request = validate_request({**GOOD, "prompt": "  a cat  "}, SETTINGS)
    assert request.prompt == "a cat"
    # seed, and size/steps when absent, are filled once the serving version is known
    assert request.seed is None
    assert validate_request({**GOOD, "seed": 7}, SETTINGS).seed == 7


@pytest.mark.parametrize("prompt", ["a\u200bcat", "\u732b", "\U0001f431", "42", "!"])
def test_prompt_with_any_visible_character_is_accepted(prompt: str) -> None:
    assert validate_request({**GOOD, "prompt": prompt}, SETTINGS).prompt == prompt
