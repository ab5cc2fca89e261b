"""Assign users with a fresh StickyAssigner in its own process (used by the stickiness tests).

Reads one JSON object from stdin::

    {"database_url": ..., "config": {...experiment file...}, "known_versions": [...],
     "now": "2026-11-20T12:00:00+00:00",
     "users": [{"user_id": ..., "signed_up_at": iso | null, "generations_7d": int | null,
                "style_tag_uses": int | null}, ...]}

and prints one JSON list of decisions (``dataclasses.asdict`` of each Decision), in order.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import datetime

from gateway.assignment import Assigner, StickyAssigner
from gateway.experiments import parse_config
from gateway.segments import UserAttributes
from storage.db import get_engine


def main() -> None:
    request = json.load(sys.stdin)
    config = parse_config(request["config"], request["known_versions"])
    sticky = StickyAssigner(Assigner(config), get_engine(request["database_url"]))
    now = datetime.fromisoformat(request["now"])
    decisions = []
    for user in request["users"]:
        signed_up = user.get("signed_up_at")
        attributes = UserAttributes(
            datetime.fromisoformat(signed_up) if signed_up else None,
            user.get("generations_7d"),
            user.get("style_tag_uses"),
        )
        decision = sticky.assign(user["user_id"], attributes, now=now)
        decisions.append(dataclasses.asdict(decision))
    json.dump(decisions, sys.stdout)


if __name__ == "__main__":
    main()
