"""Benchmark stand-ins for a diffusers pipeline: no model, a known cost per image.

A version folder becomes a stub only by carrying ``BENCHMARK_STUB.yaml`` (written by
:func:`make_stub_model`), and a worker loads it only with ``CANARY_BENCHMARK_STUBS=true``;
otherwise loading fails as ``model_load``. Loading one logs a warning and the revision
hash covers its ``pattern.safetensors``, so a stub never serves jobs unnoticed. Kinds:

- ``fixed_image``: returns a fixed image at once (measures pure orchestration overhead);
- ``sleep``: sleeps ``seconds_per_image`` per image first (a GPU's render time, during
  which, like a GPU kernel, it holds no GIL).

Workers load them through the normal path (:func:`tasks.pipelines.load_pipeline_from`),
and they take the diffusers call arguments the worker passes, batches included.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

STUB_FILE = "BENCHMARK_STUB.yaml"
PATTERN_FILE = "pattern.safetensors"
PATTERN_SIDE = 64


class StubConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["fixed_image", "sleep"]
    seconds_per_image: float = Field(default=0.0, ge=0)


@dataclass
class StubOutput:
    images: np.ndarray
    nsfw_content_detected: None = None


class StubPipeline:
    """Callable like ``StableDiffusionPipeline(..., output_type="np")``."""

    def __init__(self, config: StubConfig, pattern: np.ndarray) -> None:
        self.config = config
        self.pattern = pattern

    def __call__(
        self,
        prompt: str | list[str],
        width: int,
        height: int,
        callback_on_step_end: Any = None,
        **_: Any,
    ) -> StubOutput:
        count = len(prompt) if isinstance(prompt, list) else 1
        if self.config.kind == "sleep":
            time.sleep(self.config.seconds_per_image * count)
        reps = (-(-height // PATTERN_SIDE), -(-width // PATTERN_SIDE), 1)
        image = np.tile(self.pattern, reps)[:height, :width]
        return StubOutput(np.broadcast_to(image, (count, *image.shape)))

    # the pipeline methods the worker calls
    def to(self, device: str) -> StubPipeline:
        return self

    def set_progress_bar_config(self, **_: Any) -> None:
        pass

    def enable_attention_slicing(self) -> None:
        pass

    def disable_attention_slicing(self) -> None:
        pass


def is_stub(folder: Path) -> bool:
    return (folder / STUB_FILE).is_file()


def load_stub(folder: Path) -> StubPipeline:
    from safetensors.numpy import load_file

    config = StubConfig.model_validate(yaml.safe_load((folder / STUB_FILE).read_text()))
    pattern = load_file(folder / PATTERN_FILE)["pattern"]
    return StubPipeline(config, pattern)


def make_stub_model(
    target: Path,
    kind: Literal["fixed_image", "sleep"],
    seconds_per_image: float = 0.0,
    seed: int = 0,
) -> Path:
    """Write a stub version folder (marker, a seeded fixed pattern, a model_index.json)."""
    from safetensors.numpy import save_file

    config = StubConfig(kind=kind, seconds_per_image=seconds_per_image)
    target.mkdir(parents=True, exist_ok=True)
    pattern = np.random.default_rng(seed).random((PATTERN_SIDE, PATTERN_SIDE, 3), np.float32)
    save_file({"pattern": pattern}, target / PATTERN_FILE)
    (target / STUB_FILE).write_text(yaml.safe_dump(config.model_dump()))
    index = {"_class_name": "CanaryBenchmarkStub", "_note": f"not a model: see {STUB_FILE}"}
    (target / "model_index.json").write_text(json.dumps(index, indent=2))
    return target
