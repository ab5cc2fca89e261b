"""A batch user: a file of prompts, some bad -> submit --wait -> failures by line ->
`status BATCH_ID --json` -> the images -> a re-run changes nothing unless asked to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.journeys.conftest import Checkout

pytestmark = pytest.mark.integration

LINES = [
    '{"prompt": "a lighthouse at dusk", "model_version": "v2", "seed": 7, "steps": 4}',
    '{"prompt": "a fox in the snow", "user_id": "u-7", "seed": 8, "steps": 4, "width": 256}',
    # a JSON fault at the end of the line: reported at its own column, not the next line's
    '{"prompt": "a broken line", "model_version": "v1", "seed": 7',
    '{"prompt": "too wide for a tiny model", "model_version": "v1", "width": 2048}',
    '{"prompt": "a dancer [[fault:nan]]", "model_version": "v1", "seed": 9, "steps": 4}',
    '{"prompt": "no version and no user"}',
]


@pytest.fixture(scope="module")
def stack(checkout: Checkout, running_stack: Checkout) -> Checkout:
    return running_stack


@pytest.fixture(scope="module", autouse=True)
def fault_injection(checkout: Checkout) -> None:
    # the documented test-only switch: a [[fault:...]] marker makes a real render fail
    checkout.env["CANARY_FAULT_INJECTION"] = "true"


@pytest.fixture(scope="module")
def first_run(stack: Checkout) -> tuple[str, dict[str, object], str]:
    (stack.root / "jobs.jsonl").write_text("\n".join(LINES) + "\n")
    result = stack.run("canary submit jobs.jsonl --wait", check=False)
    assert result.returncode == 1, result.stdout + result.stderr  # a line failed
    batch_id = result.stdout.split("(batch ")[1].split(")")[0]
    status = stack.run(f"canary status {batch_id} --json", check=False)
    assert status.returncode == 1, status.stderr  # the batch has a failed line
    report = json.loads(status.stdout)
    return batch_id, report, result.stdout + result.stderr


def test_submit_wait_lists_every_rejected_and_failed_line(
    first_run: tuple[str, dict[str, object], str],
) -> None:
    _, _, output = first_run
    assert "jobs.jsonl:3: invalid JSON at column 61: Expecting ',' delimiter" in output
    assert "jobs.jsonl:4: width: at most 1024 on model version v1, got 2048" in output
    assert "jobs.jsonl:6: user_id: required when model_version is not given" in output
    assert "3 jobs queued, 0 already submitted, 3 lines rejected" in output
    assert "failed lines" in output and "line 5: job " in output and "nan_output" in output


def test_status_of_the_batch_as_json(first_run: tuple[str, dict[str, object], str]) -> None:
    batch_id, report, _ = first_run
    assert report["batch_id"] == batch_id and report["done"] is True
    assert report["counts"] == {"QUEUED": 0, "RUNNING": 0, "SUCCEEDED": 2, "FAILED": 1}
    assert [item["line"] for item in report["rejected"]] == [3, 4, 6]  # type: ignore[index]
    [failed] = report["failed"]  # type: ignore[misc]
    assert failed["line"] == 5 and failed["failure_kind"] == "nan_output"
    assert failed["failure_message"]
    assert [image["line"] for image in report["images"]] == [1, 2]  # type: ignore[index]


def test_the_images_are_where_the_batch_says(
    first_run: tuple[str, dict[str, object], str],
) -> None:
    _, report, _ = first_run
    sizes = []
    for image in report["images"]:  # type: ignore[attr-defined]
        assert image["url"].startswith("file://")
        with Image.open(Path(image["url"].removeprefix("file://"))) as png:
            sizes.append(png.size)
    assert sizes == [(512, 512), (256, 512)]  # the version's default fills what is left out


def test_a_rerun_queues_nothing_and_says_why(
    stack: Checkout, first_run: tuple[str, dict[str, object], str]
) -> None:
    batch_id, _, _ = first_run
    result = stack.run("canary submit jobs.jsonl", check=False)
    assert result.returncode == 1  # the bad lines are still bad
    assert "0 jobs queued, 3 already submitted" in result.stdout
    assert f"lines 1-2, 5 by batch {batch_id}" in result.stdout
    assert "canary submit jobs.jsonl --resubmit" in result.stdout


def test_the_same_lines_in_another_file_are_new_jobs(stack: Checkout) -> None:
    (stack.root / "other").mkdir(exist_ok=True)
    (stack.root / "other" / "jobs.jsonl").write_text(LINES[0] + "\n")
    result = stack.run("canary submit other/jobs.jsonl --json")
    assert json.loads(result.stdout)["created"] == 1


def test_resubmit_renders_again_on_purpose(stack: Checkout) -> None:
    (stack.root / "good.jsonl").write_text(LINES[0] + "\n" + LINES[1] + "\n")
    first = json.loads(stack.run("canary submit good.jsonl --json").stdout)
    again = json.loads(stack.run("canary submit good.jsonl --json").stdout)
    assert (first["created"], again["created"], again["duplicates"]) == (2, 0, 2)
    forced = stack.run("canary submit good.jsonl --resubmit --wait --json")
    report = json.loads(forced.stdout)
    assert report["created"] == 2 and report["counts"]["SUCCEEDED"] == 2
    assert set(report["images"][0]) >= {"line", "job_id", "url"}
    assert {i["job_id"] for i in report["images"]}.isdisjoint(first["job_ids"])


def test_an_unknown_id_is_an_error_naming_it(stack: Checkout) -> None:
    result = stack.run("canary status no-such-id", check=False)
    assert result.returncode == 1 and "no job or batch no-such-id" in result.stderr
