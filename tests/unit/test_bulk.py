"""Bulk files: JSONL and CSV, bad lines reported by number, good lines kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from canary.settings import Settings
from gateway.bulk import LineError, ParsedLine, read_requests

SETTINGS = Settings(versions=["v1", "v2"])


def test_jsonl_bad_lines_do_not_stop_good_ones(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    lines = [
        json.dumps({"prompt": "one", "model_version": "v1", "width": 64, "height": 64}),
        "{not json",
        "",
        json.dumps({"prompt": "", "model_version": "v1"}),
        json.dumps({"prompt": "four", "width": 64, "height": 64}),
        json.dumps({"prompt": "five", "model_version": "v7"}),
        json.dumps(["a", "list"]),
    ]
    path.write_text("\n".join(lines) + "\n")
    items = list(read_requests(path, SETTINGS, default_version="v2"))
    good = [i for i in items if isinstance(i, ParsedLine)]
    bad = {i.line: i.message for i in items if isinstance(i, LineError)}
    assert [g.line for g in good] == [1, 5]
    assert good[1].request.model_version == "v2"  # default applies to lines without one
    assert set(bad) == {2, 4, 6, 7}
    assert bad[2].startswith("invalid JSON")
    assert "prompt" in bad[4]
    assert "unknown version 'v7'" in bad[6]
    assert "must be an object" in bad[7]


def test_csv_numbers_converted_and_errors_by_line(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text(
        "prompt,model_version,seed,steps,width,height,guidance\n"
        "a cat,v1,5,10,64,64,6.5\n"
        "a dog,v2,x,10,64,64,7\n"
        "a cow,v1,,10,64,72,\n"
        "a fox,v1,1,2,3,4,5,6\n"
    )
    items = list(read_requests(path, SETTINGS))
    good = {i.line: i.request for i in items if isinstance(i, ParsedLine)}
    bad = {i.line: i.message for i in items if isinstance(i, LineError)}
    assert good[2].seed == 5 and good[2].guidance == 6.5 and good[2].steps == 10
    assert good[4].height == 72 and good[4].guidance == 7.5  # empty cells take defaults
    assert bad[3].startswith("bad number")
    assert bad[5] == "more cells than header columns"


def test_resubmitting_a_file_derives_the_same_keys(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text(json.dumps({"prompt": "same", "model_version": "v1"}) + "\n")
    first, second = (next(iter(read_requests(path, SETTINGS))) for _ in range(2))
    assert isinstance(first, ParsedLine) and isinstance(second, ParsedLine)
    assert first.request.idempotency_key == second.request.idempotency_key
    assert first.request.idempotency_key.startswith("file:jobs.jsonl:")
    # the same lines in another folder are other jobs; a resubmission token, new ones too
    (tmp_path / "other").mkdir()
    elsewhere = tmp_path / "other" / "jobs.jsonl"
    elsewhere.write_text(path.read_text())
    moved = next(iter(read_requests(elsewhere, SETTINGS)))
    again = next(iter(read_requests(path, SETTINGS, resubmission="batch-2")))
    assert isinstance(moved, ParsedLine) and isinstance(again, ParsedLine)
    keys = {first.request.idempotency_key, moved.request.idempotency_key}
    assert len(keys | {again.request.idempotency_key}) == 3


def test_unknown_extension_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.txt"
    path.write_text("x")
    with pytest.raises(ValueError, match=r"expected a \.jsonl or \.csv"):
        list(read_requests(path, SETTINGS))
