"""The layer rules that import-linter cannot express (its contract is in pyproject.toml)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"analysis", "benchmarks", "canary", "celeryconfig", "gateway", "scheduler"}
FIRST_PARTY |= {"storage", "tasks"}
LAYER_ZERO = {"canary.settings", "canary.contracts"}


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module)
    return modules


def test_celeryconfig_imports_only_layer_zero() -> None:
    """celeryconfig.py is a top-level module (Celery loads it by name), so import-linter's
    root packages cannot hold it."""
    first_party = {
        m for m in imported_modules(ROOT / "celeryconfig.py") if m.split(".")[0] in FIRST_PARTY
    }
    assert first_party <= LAYER_ZERO, first_party - LAYER_ZERO


def test_the_gateway_layer_names_every_gateway_module_but_http() -> None:
    """A layer cannot contain another, so L3 lists gateway's modules one by one; a module
    added to gateway/ and missing there would escape the contract."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [layers] = [
        c["layers"] for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"
    ]
    [gateway_layer] = [layer for layer in layers if layer.startswith("gateway.assignment")]
    listed = {name.strip() for name in gateway_layer.split(":")}
    on_disk = {
        f"gateway.{path.stem}"
        for path in (ROOT / "gateway").glob("*.py")
        if path.stem != "__init__"
    }
    on_disk |= {f"gateway.{path.name}" for path in (ROOT / "gateway").iterdir()
                if (path / "__init__.py").exists() and path.name != "http"}  # fmt: skip
    assert listed == on_disk
