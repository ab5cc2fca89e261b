"""What client keys may learn of the version that served them (issue 17)."""

from __future__ import annotations

from canary.contracts import image_key
from gateway.blinding import HIDDEN, hide_versions, may_presign
from storage.images import is_legacy_key, legacy_image_key


def test_image_keys_name_no_version_and_are_deterministic() -> None:
    assert image_key("job-1") == "renders/job-1.png"
    assert not is_legacy_key(image_key("job-1"))
    assert is_legacy_key(legacy_image_key("v1", "job-1"))
    assert legacy_image_key("v1", "job-1") == "renders/v1/job-1.png"


def test_legacy_keys_are_never_presigned_for_blind_callers() -> None:
    assert may_presign("renders/job-1.png", blind=True)
    assert not may_presign("renders/v1/job-1.png", blind=True)
    assert may_presign("renders/v1/job-1.png", blind=False)


def test_version_names_are_hidden_in_messages() -> None:
    message = "OSError: no file /models/v2/unet; render.v2 queue; v20 and xv2 stay"
    hidden = hide_versions(message, ["v2", "v1"])
    assert (
        hidden == f"OSError: no file /models/{HIDDEN}/unet; render.{HIDDEN} queue; v20 and xv2 stay"
    )
    assert hide_versions(None, ["v1"]) is None
    assert hide_versions("unknown model version 'sd-1.5'", ["sd-1.5"]) == (
        f"unknown model version '{HIDDEN}'"
    )
