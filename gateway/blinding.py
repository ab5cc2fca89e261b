"""What a client key may not learn: which model version served its job (the A/B test
stays blind). Operators, and clients when ``show_variant_to_clients`` is set, see it all.

Image keys are version-blind (storage/images.py); a job recorded before that still names
its version in its key, so its image is streamed by the API instead of handed out as a
presigned URL of that key. Failure messages are passed on with version names hidden.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from storage.images import is_legacy_key

HIDDEN = "<model version>"


def may_presign(key: str, *, blind: bool) -> bool:
    """Whether a caller may get a (presigned) URL that contains ``key``."""
    return not (blind and is_legacy_key(key))


def hide_versions(text: str | None, versions: Iterable[str]) -> str | None:
    """``text`` with every whole-word mention of one of ``versions`` replaced."""
    if not text:
        return text
    for version in sorted(set(versions), key=len, reverse=True):
        if version:
            text = re.sub(rf"(?<![A-Za-z0-9_]){re.escape(version)}(?![A-Za-z0-9_])", HIDDEN, text)
    return text
