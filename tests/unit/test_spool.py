"""The spool of images waiting for the object store (tasks/spool.py): entries are whole or
absent, bounded, and survive the process (they are only files)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

from tasks.spool import Spool, SpooledJob, entry_name, holder_node, spool_holder


def entry(job_id: str, node: str = "render-v1-cpu-abc123@host") -> SpooledJob:
    return SpooledJob(
        job_id=job_id,
        key=f"renders/{job_id}.png",
        version="v1",
        node=node,
        task_id=job_id,
        fields={"image_key": f"renders/{job_id}.png", "inference_ms": 12.5},
        created_at="2026-12-01T10:00:00+00:00",
        started_at="2026-12-01T10:00:01+00:00",
        upload_started_at="2026-12-01T10:00:02+00:00",
    )


def test_an_entry_is_a_png_and_its_description_written_atomically(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "v1", max_images=4)
    assert spool.put(entry("job-1"), b"\x89PNG one")
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == ["job-1.json", "job-1.png"]
    assert json.loads((tmp_path / "v1" / "job-1.json").read_text())["key"] == "renders/job-1.png"
    # a second process (the restarted worker) reads the same files
    again = Spool(tmp_path / "v1", max_images=4)
    [found] = again.entries()
    assert found == replace(entry("job-1"), spooled_at=found.spooled_at)
    assert again.read_png(found) == b"\x89PNG one" and again.holds("job-1") and again.count() == 1
    again.remove(found)
    assert not any((tmp_path / "v1").iterdir()) and not again.holds("job-1")


def test_halves_and_temporary_files_are_never_entries(tmp_path: Path) -> None:
    root = tmp_path / "v1"
    spool = Spool(root, max_images=4)
    spool.put(entry("whole"), b"png")
    (root / "young.png").write_bytes(b"png, its json being written")
    old = root / "crashed.png"  # died between the PNG and its description
    old.write_bytes(b"png")
    os.utime(old, (time.time() - 120, time.time() - 120))
    (root / "lost.json").write_text(json.dumps(entry("lost").__dict__))  # image gone
    (root / ".whole.png.123.4.spool-tmp").write_bytes(b"half")
    assert [e.job_id for e in spool.entries()] == ["whole"]
    assert not old.exists() and not (root / "lost.json").exists()
    assert (root / "young.png").exists()  # maybe still being spooled by another process


def test_the_spool_is_bounded_and_can_be_turned_off(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "v1", max_images=2)
    assert spool.put(entry("a"), b"1") and spool.put(entry("b"), b"2")
    assert not spool.put(entry("c"), b"3")  # full: the caller sends the job back
    assert spool.put(entry("a"), b"1 again")  # the same job replaces its entry
    assert {e.job_id for e in spool.entries()} == {"a", "b"} and spool.count() == 2
    assert not Spool(tmp_path / "off", max_images=0).put(entry("a"), b"1")


def test_names_and_holders() -> None:
    assert entry_name("3f2a-9c_x.1") == "3f2a-9c_x.1"
    odd = entry_name("../etc/passwd")
    assert "/" not in odd and odd.startswith("job-")
    assert entry_name(".hidden") != ".hidden"
    node = "render-v1-cpu-abc123@gpu-host-1"
    assert spool_holder(node) == "render-v1-cpu-abc123+spool@gpu-host-1"
    assert holder_node(spool_holder(node)) == node
    assert holder_node(node) == node


def test_status_shows_a_worker_whose_breaker_is_open() -> None:
    from canary.cli.overview import describe_breaker

    breaker = {
        "node": "render-v1-cpu-abc123@host",
        "open": True,
        "open_since": "2026-12-01T10:42:07+00:00",
        "spooled": 6,
        "spool_dir": "/var/lib/canary/spool/v1",
        "last_error": "EndpointConnectionError",
    }
    line = describe_breaker("v1", breaker)
    assert "storage breaker open" in line and "since 2026-12-01 10:42 UTC" in line
    assert "not taking jobs, 6 image(s) spooled in /var/lib/canary/spool/v1" in line
    draining = describe_breaker("v1", {**breaker, "open": False, "spooled": 2})
    assert draining == "render-v1-cpu-abc123@host (v1): uploading 2 spooled image(s)"
