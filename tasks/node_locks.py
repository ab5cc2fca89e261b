"""Whether a worker of this host is still alive, without asking the broker.

Each render worker holds an exclusive ``flock`` on ``<tmp>/canary-render-nodes/<node>``
for its lifetime (its pool processes share it). A node name is unique per worker, so a
restarted worker has a new one and cannot find its predecessor's jobs under its own; it
recovers them as jobs of a dead neighbour instead: a node of its host whose lock nobody
holds. The lock is the operating system's word, not a ping: a live worker whose broker
connection dropped still holds it, so its jobs are never taken from under it.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import tempfile
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)
LOCK_DIR = Path(tempfile.gettempdir()) / "canary-render-nodes"
_held: list[IO[str]] = []  # kept open (and locked) until the process exits


def hold(node: str) -> bool:
    """Lock ``node``'s file for the rest of this process (and its children)."""
    path = LOCK_DIR / node
    try:
        LOCK_DIR.mkdir(mode=0o1777, exist_ok=True)
        handle = path.open("a")
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        log.warning("cannot lock %s (%s): a restart of this worker leaves its unfinished jobs "
                    "to the periodic sweep", path, exc)  # fmt: skip
        return False
    _held.append(handle)
    atexit.register(path.unlink, missing_ok=True)
    return True


def is_dead(node: str) -> bool:
    """True when ``node`` locked its file and nobody holds the lock now (its worker is
    gone); False when it is held, or unknown here (another host, or no lock file)."""
    path = LOCK_DIR / node
    try:
        with path.open("r") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True
    except OSError:  # no such file (another host's node), or not readable
        return False


def forget(node: str) -> None:
    """Remove a dead node's lock file once its jobs are recovered."""
    (LOCK_DIR / node).unlink(missing_ok=True)
