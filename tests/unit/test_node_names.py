"""Render worker node names (tasks/nodes.py) and node locks (tasks/node_locks.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import node_locks
from tasks.nodes import node_prefix, serves, unique_node_name


def test_default_names_are_unique_and_keep_the_version_device_prefix() -> None:
    names = {unique_node_name("v1", "cuda:0", "gpu-host") for _ in range(200)}
    # 6 random hex digits: one pair among 200 names collides in about 1 run of 840 (a CI
    # run once drew one); five or more collisions would mean the suffix is not random
    assert len(names) > 195
    assert all(re.fullmatch(r"render-v1-cuda0-[0-9a-f]{6}@gpu-host", n) for n in names)
    prefix = node_prefix("v1", "cuda:0")
    assert all(serves(n, prefix) for n in names)
    assert serves("render-v1-cuda0@gpu-host", prefix)  # an explicit --name
    assert not serves("render-v10-cuda0-abcdef@gpu-host", prefix)
    assert not serves("render-v1-cuda1-abcdef@gpu-host", prefix)


def test_a_node_is_dead_only_once_no_process_holds_its_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_locks, "LOCK_DIR", tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from tasks import node_locks; "
         f"node_locks.LOCK_DIR = Path({str(tmp_path)!r}); node_locks.hold('a@h'); "
         "print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert not node_locks.is_dead("a@h")  # alive: its jobs stay with it
        assert not node_locks.is_dead("b@other-host")  # never seen here: unknown
    finally:
        holder.kill()
        holder.wait()
    assert node_locks.is_dead("a@h")  # killed: nobody holds the lock any more
    node_locks.forget("a@h")
    assert not node_locks.is_dead("a@h")
