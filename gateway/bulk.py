"""Reading bulk job files (JSONL or CSV), one request per line, errors by line number."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canary.settings import Settings
from gateway.job_requests import InvalidJob, JobRequest, validate_request

INT_FIELDS = {"seed", "steps", "width", "height"}
FLOAT_FIELDS = {"guidance"}


@dataclass(frozen=True)
class LineError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class ParsedLine:
    line: int
    request: JobRequest


def _csv_value(name: str, raw: str) -> Any:
    """CSV cells are text; convert the numeric columns and treat empty cells as absent."""
    if raw == "":
        return None
    if name in INT_FIELDS:
        return int(raw)
    if name in FLOAT_FIELDS:
        return float(raw)
    return raw


def _records(path: Path) -> Iterator[tuple[int, Any | LineError]]:
    """(line number, raw record or parse error) for each non-blank line."""
    with path.open(newline="", encoding="utf-8") as handle:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(handle)
            for row in reader:
                line = reader.line_num
                if None in row:
                    yield line, LineError(line, "more cells than header columns")
                    continue
                try:
                    yield (
                        line,
                        {
                            k: v
                            for k, v in (
                                (k, _csv_value(k, (c or "").strip())) for k, c in row.items()
                            )
                            if v is not None
                        },
                    )
                except ValueError as exc:
                    yield line, LineError(line, f"bad number: {exc}")
        else:
            for line, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                # without its line break, an error at the end of the line is reported at
                # that line's last column, not at column 1 of the next
                text = text.rstrip("\r\n")
                try:
                    yield line, json.loads(text)
                except json.JSONDecodeError as exc:
                    yield line, LineError(line, f"invalid JSON at column {exc.colno}: {exc.msg}")


def line_key(path: Path, line: int, record: dict[str, Any], resubmission: str | None) -> str:
    """The idempotency key of a file line without one of its own.

    It names the file by its absolute path (so the same lines in another file are other
    jobs), the line number and the line's content (so an edited line is a new job). A
    resubmission token makes every line a new job on purpose (`canary submit --resubmit`).
    """
    content = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    where = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    key = f"file:{path.name[:60]}:{where}:{line}:{content}"
    return f"{key}:{resubmission}" if resubmission else key


def read_requests(
    path: Path,
    settings: Settings,
    *,
    default_version: str | None = None,
    resubmission: str | None = None,
) -> Iterator[ParsedLine | LineError]:
    """Validated requests from a .jsonl/.csv file; bad lines become LineError, not exceptions.

    Lines without an idempotency key get one from :func:`line_key`, so submitting the same
    file again (say after a crash) enqueues nothing twice.
    """
    if path.suffix.lower() not in {".jsonl", ".ndjson", ".json", ".csv"}:
        raise ValueError(f"{path}: expected a .jsonl or .csv file")
    for line, record in _records(path):
        if isinstance(record, LineError):
            yield record
            continue
        if isinstance(record, dict):
            if default_version and "model_version" not in record:
                record = {**record, "model_version": default_version}
            if "idempotency_key" not in record:
                record = {**record, "idempotency_key": line_key(path, line, record, resubmission)}
        try:
            yield ParsedLine(line, validate_request(record, settings))
        except InvalidJob as exc:
            yield LineError(line, str(exc))
