"""The per-version summary keeps queue wait, render time and end-to-end latency apart."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console
from sqlmodel import Session

from analysis.summary import VersionSummary, summarize
from canary.cli import report
from storage.db import get_engine, init_db
from storage.models import Job, JobStatus


def job(n: int, version: str, wait_ms: float, render_ms: float, upload_ms: float) -> Job:
    return Job(
        id=f"{version}-{n}", model_version=version, prompt="p", seed=n, steps=2, guidance=7.5,
        width=64, height=64, status=JobStatus.SUCCEEDED, queue_wait_ms=wait_ms,
        inference_ms=render_ms, upload_ms=upload_ms,
        end_to_end_ms=wait_ms + render_ms + upload_ms,
    )  # fmt: skip


def test_percentiles_of_each_part_per_version(tmp_path: Path) -> None:
    engine = get_engine(f"sqlite:///{tmp_path / 'summary.db'}")
    init_db(engine)
    with Session(engine) as session:
        # v1: jobs queued together, so each waits for the renders ahead of it
        for n in range(1, 11):
            session.add(job(n, "v1", wait_ms=500.0 * (n - 1), render_ms=500.0, upload_ms=10.0))
        session.add(job(99, "v2", wait_ms=0.0, render_ms=800.0, upload_ms=20.0))
        session.commit()
    v1, v2 = summarize(engine)
    assert (v1.version, v1.jobs, v1.success_rate) == ("v1", 10, 1.0)
    assert v1.p50_queue_wait_ms == 2000.0  # nearest rank: the 5th of 10
    assert (v1.p50_render_ms, v1.p95_render_ms) == (500.0, 500.0)
    assert (v1.p50_end_to_end_ms, v1.p95_end_to_end_ms) == (2510.0, 5010.0)
    assert (v2.p50_queue_wait_ms, v2.p50_render_ms, v2.p95_end_to_end_ms) == (0.0, 800.0, 820.0)


def test_table_labels_each_latency_and_explains_end_to_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    console = Console(record=True, width=200)
    monkeypatch.setattr(report, "console", console)
    summary = VersionSummary(
        "v1", jobs=20, succeeded=20, p50_end_to_end_ms=20_000.0, p95_end_to_end_ms=38_000.0,
        p50_queue_wait_ms=19_400.0, p50_render_ms=500.0, p95_render_ms=650.0,
    )  # fmt: skip
    report.print_summary([summary], "file:///tmp/objects")
    text = console.export_text()
    for column in ("queue wait P50", "render P50 / P95", "end-to-end P50 / P95"):
        assert column in text
    assert "19,400 ms" in text and "500 ms / 650 ms" in text and "20,000 ms / 38,000 ms" in text
    assert "end-to-end = queue wait + render + upload" in text
