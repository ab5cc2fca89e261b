"""The model registry: one diffusers folder per version under the model directory."""

from __future__ import annotations

import hashlib
from pathlib import Path


class ModelNotFound(LookupError):
    pass


def version_dir(model_dir: Path, version: str) -> Path:
    return model_dir / version


def require_version_dir(model_dir: Path, version: str) -> Path:
    path = version_dir(model_dir, version)
    if not (path / "model_index.json").is_file():
        raise ModelNotFound(
            f"model version {version!r} has no diffusers folder at {path} "
            f"(expected {path / 'model_index.json'}; build one with "
            f"`canary models make-tiny {version}` or copy a checkpoint there)"
        )
    return path


def weights_revision(folder: Path) -> str:
    """Content hash of every weights file, so jobs record exactly which weights served them."""
    digest = hashlib.sha256()
    weight_files = sorted(p for p in folder.rglob("*.safetensors") if p.is_file())
    if not weight_files:
        raise ModelNotFound(f"no .safetensors weights under {folder}")
    for path in weight_files:
        digest.update(path.relative_to(folder).as_posix().encode())
        with path.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:16]


def available_versions(model_dir: Path) -> list[str]:
    if not model_dir.is_dir():
        return []
    return sorted(p.name for p in model_dir.iterdir() if (p / "model_index.json").is_file())
