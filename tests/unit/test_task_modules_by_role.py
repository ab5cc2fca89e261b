"""Each process imports only the task modules it runs (tasks.app.serve_only): Celery's
own loader, as a worker, beat or Flower calls it at start-up, must not bring in the
libraries of the other roles (torch for rendering; scipy and matplotlib for reports).
The statistics stack itself is imported when a report is made, so neither the scheduler
worker nor the API pays for it at start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # a fresh interpreter per role

HEAVY = ("torch", "scipy", "statsmodels", "pandas", "matplotlib")
PROBE = """
import json, sys
HEAVY = {heavy!r}
from tasks.app import app, serve_only
{import_line}
serve_only(app, {modules})
app.loader.import_default_modules()
print(json.dumps({{
    "heavy": sorted(m for m in HEAVY if m in sys.modules),
    "tasks": sorted(name for name in app.tasks if name.startswith("canary.")),
}}))
"""


def loaded_by(modules: str | None) -> dict[str, list[str]]:
    """What a process that serves ``modules`` (a name in tasks.app; None: no module) has
    imported once Celery's loader has run."""
    import_line = f"from tasks.app import {modules}" if modules else ""
    code = PROBE.format(import_line=import_line, modules=modules or "()", heavy=HEAVY)
    return run_probe(code)


def run_probe(code: str, **env: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter (with ``env`` added); its last line, as JSON."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, **env},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return loaded


def test_a_render_worker_loads_torch_and_only_the_render_tasks() -> None:
    loaded = loaded_by("RENDER_TASK_MODULES")
    assert loaded["heavy"] == ["torch"]
    assert loaded["tasks"] == ["canary.render"]


def test_the_scheduler_worker_loads_the_periodic_tasks_without_torch_or_statistics() -> None:
    loaded = loaded_by("PERIODIC_TASK_MODULES")
    assert loaded["heavy"] == []
    assert "canary.render" not in loaded["tasks"]
    assert "canary.scheduler.release_held" in loaded["tasks"]


def test_beat_and_flower_load_no_task_module() -> None:
    loaded = loaded_by(None)
    assert loaded == {"heavy": [], "tasks": []}


def test_the_api_starts_without_torch_or_the_statistics_stack() -> None:
    code = (
        "import json, sys\n"
        "from gateway.http.app import create_app\n"
        f"print(json.dumps({{'heavy': sorted(m for m in {HEAVY!r} if m in sys.modules)}}))"
    )
    assert run_probe(code) == {"heavy": []}


def test_make_tiny_on_a_built_version_answers_without_importing_torch(tmp_path: Path) -> None:
    """The README's `canary models make-tiny` line, run again, only reads the seed file."""
    from tasks.tiny_model import TINY_SEED_FILE

    built = tmp_path / "models" / "v1"
    built.mkdir(parents=True)
    (built / "model_index.json").write_text("{}")
    (built / TINY_SEED_FILE).write_text(json.dumps({"seed": 1}))
    code = f"""
import json, sys
from typer.testing import CliRunner
from canary.cli.main import app
result = CliRunner().invoke(app, ["models", "make-tiny", "v1", "--seed", "1"])
print(json.dumps({{"exit": result.exit_code, "output": result.output,
                  "heavy": sorted(m for m in {HEAVY!r} if m in sys.modules)}}))
"""
    outcome = run_probe(code, CANARY_MODEL_DIR=str(tmp_path / "models"))
    assert outcome["exit"] == 0, outcome["output"]
    assert "v1 is already built (seed 1)" in outcome["output"]
    assert outcome["heavy"] == []
