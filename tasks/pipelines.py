"""Load a version's diffusers pipeline once per worker process, onto one device."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from tasks import stub_pipelines
from tasks.postprocess import PostProcessor
from tasks.registry import require_version_dir, weights_revision
from tasks.version_config import VersionConfig, load_version_config

if TYPE_CHECKING:
    from diffusers.pipelines.pipeline_utils import DiffusionPipeline

log = logging.getLogger(__name__)


class Pipeline(Protocol):
    """What the worker calls on a loaded pipeline (diffusers', or a benchmark stub)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def enable_attention_slicing(self) -> None: ...

    def disable_attention_slicing(self) -> None: ...


@dataclass
class LoadedModel:
    version: str
    revision: str
    device: str
    pipeline: Pipeline
    load_ms: float
    attention: str
    config: VersionConfig

    @property
    def postprocess(self) -> PostProcessor:
        return PostProcessor(self.config)


def quiet_model_libraries() -> None:
    """Keep diffusers/transformers to errors: their import-time notices (e.g. "torchvision
    not installed") and progress bars would otherwise fill every worker log."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # unannotated in transformers
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # unannotated in transformers
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()


def _dtype_for(device: str) -> torch.dtype:
    return torch.float16 if device.startswith("cuda") else torch.float32


def _enable_fast_attention(pipeline: DiffusionPipeline, device: str) -> str:
    """xformers on CUDA when installed, else PyTorch SDPA (diffusers' default)."""
    if device.startswith("cuda"):
        try:
            import xformers  # noqa: F401

            pipeline.enable_xformers_memory_efficient_attention()
            return "xformers"
        except Exception as exc:  # xformers is optional; SDPA is a fine fallback
            log.info("xformers unavailable (%s); using SDPA attention", exc)
    return "sdpa"


def load_pipeline(
    model_dir: Path,
    version: str,
    device: str,
    torch_threads: int | None = None,
    *,
    allow_stub: bool = False,
) -> LoadedModel:
    """Load a version from the registry folder ``model_dir/version``."""
    folder = require_version_dir(model_dir, version)
    return load_pipeline_from(folder, version, device, torch_threads, allow_stub=allow_stub)


def load_pipeline_from(
    folder: Path,
    version: str,
    device: str,
    torch_threads: int | None = None,
    *,
    allow_stub: bool = False,
) -> LoadedModel:
    """Load any diffusers folder as ``version`` (a published hot-fix revision, say).

    A folder marked as a benchmark stub loads only with ``allow_stub`` (see
    :mod:`tasks.stub_pipelines`).
    """
    quiet_model_libraries()
    # the defining module: mypy reads `diffusers.DiffusionPipeline` as its placeholder class
    from diffusers.pipelines.pipeline_utils import DiffusionPipeline

    if torch_threads:
        torch.set_num_threads(torch_threads)
    started = time.perf_counter()
    config = load_version_config(folder)
    revision = weights_revision(folder)
    if stub_pipelines.is_stub(folder):
        if not allow_stub:
            raise ValueError(
                f"{folder} is a benchmark stub ({stub_pipelines.STUB_FILE}), not a model; "
                "set CANARY_BENCHMARK_STUBS=true to serve it"
            )
        log.warning("version %s is a BENCHMARK STUB pipeline (%s): it renders no model",
                    version, folder)  # fmt: skip
        pipeline: Pipeline = stub_pipelines.load_stub(folder)
        attention = "benchmark-stub"
    else:
        diffusers_pipeline = DiffusionPipeline.from_pretrained(
            folder, local_files_only=True, use_safetensors=True, dtype=_dtype_for(device)
        )
        diffusers_pipeline = diffusers_pipeline.to(device)
        diffusers_pipeline.set_progress_bar_config(disable=True)  # type: ignore[no-untyped-call]  # unannotated in diffusers
        attention = _enable_fast_attention(diffusers_pipeline, device)
        pipeline = diffusers_pipeline
    load_ms = (time.perf_counter() - started) * 1000
    log.info(
        "loaded %s revision %s on %s in %.0f ms (%s)", version, revision, device, load_ms, attention
    )
    return LoadedModel(version, revision, device, pipeline, load_ms, attention, config)
