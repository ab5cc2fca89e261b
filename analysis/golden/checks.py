"""Automatic checks of one golden image, before any human looks at it.

- Hard failures (the job failed: error, timeout, OOM, black, NaN, NSFW-filtered...) and
  images that are black, flat or non-finite are level S.
- An optional image-text scorer (a CLIP model from a local folder) scores each expected
  element; an element scoring below the case's ``tolerance.element_score`` makes it A.
- Drift: the image is compared with the same case rendered by the same version on the
  previous night (pixel RMSE on a 0-1 scale and perceptual-hash distance); an RMSE above
  the case's ``tolerance.drift`` flags it. Same seed, same weights: drift means something
  changed (weights, post-processing, libraries, hardware).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
from PIL import Image

from analysis.golden.cases import GoldenCase, Level
from storage.models import Job, JobStatus
from tasks.checks import classify_output

PROMPT_TEMPLATE = "a photo of {}"


@dataclass(frozen=True)
class Drift:
    rmse: float
    phash_bits: int


@dataclass(frozen=True)
class CheckOutcome:
    """What the checks found; ``level`` is None when only a human can decide."""

    level: Level | None
    reason: str | None = None
    element_scores: dict[str, float] | None = None
    drift: Drift | None = None
    drifted: bool | None = None

    def as_fields(self, previous_run_id: str | None) -> dict[str, Any]:
        return {
            "auto_level": self.level.value if self.level else None,
            "auto_reason": self.reason,
            "element_scores": (
                json.dumps(self.element_scores) if self.element_scores is not None else None
            ),
            "previous_run_id": previous_run_id if self.drift is not None else None,
            "drift_rmse": self.drift.rmse if self.drift else None,
            "drift_phash_bits": self.drift.phash_bits if self.drift else None,
            "drifted": self.drifted,
        }


def decode_png(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def to_unit_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def job_failure(job: Job) -> CheckOutcome | None:
    """A job that did not produce an image is S, with the worker's failure kind."""
    if job.status == JobStatus.SUCCEEDED:
        return None
    reason = job.failure_kind or "error"
    if job.failure_message:
        reason = f"{reason}: {job.failure_message}"
    return CheckOutcome(Level.S, reason)


def pixel_failure(pixels: np.ndarray) -> CheckOutcome | None:
    """Black, flat or non-finite pixels (0-1 scale) are S even if the worker accepted them."""
    found = classify_output(pixels)
    if found is None:
        return None
    kind, message = found
    return CheckOutcome(Level.S, f"{kind.value}: {message}")


def drift_between(current: Image.Image, previous: Image.Image) -> Drift:
    if previous.size != current.size:
        previous = previous.resize(current.size, Image.Resampling.LANCZOS)
    a, b = to_unit_array(current), to_unit_array(previous)
    rmse = float(np.sqrt(np.mean((a - b) ** 2)))
    bits = int(imagehash.phash(current) - imagehash.phash(previous))
    return Drift(rmse=rmse, phash_bits=bits)


class ElementScorer:
    """Cosine similarity between an image and each expected element (CLIP, local folder)."""

    def __init__(self, folder: Path, device: str = "cpu") -> None:
        from transformers import CLIPModel, CLIPProcessor

        from tasks.pipelines import quiet_model_libraries

        quiet_model_libraries()
        self.device = device
        self.model = CLIPModel.from_pretrained(folder, local_files_only=True).to(device).eval()  # type: ignore[arg-type]  # transformers mistypes PreTrainedModel.to
        self.processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)

    def score(self, image: Image.Image, elements: tuple[str, ...]) -> dict[str, float]:
        import torch

        texts = [PROMPT_TEMPLATE.format(element) for element in elements]
        inputs = self.processor(
            text=texts, images=image, return_tensors="pt", padding=True, truncation=True
        ).to(self.device)
        with torch.inference_mode():
            out = self.model(**inputs)
        image_embeds = torch.nn.functional.normalize(out.image_embeds, dim=-1)
        text_embeds = torch.nn.functional.normalize(out.text_embeds, dim=-1)
        similarity = (text_embeds @ image_embeds.T).squeeze(-1)
        return {
            element: round(float(s), 4) for element, s in zip(elements, similarity, strict=True)
        }


def check_image(
    case: GoldenCase,
    image: Image.Image,
    previous: Image.Image | None,
    scorer: ElementScorer | None,
) -> CheckOutcome:
    """Checks of a rendered image (the job succeeded)."""
    broken = pixel_failure(to_unit_array(image))
    drift = drift_between(image, previous) if previous is not None else None
    drifted = drift.rmse > case.tolerance.drift if drift is not None else None
    if broken is not None:
        return CheckOutcome(broken.level, broken.reason, drift=drift, drifted=drifted)
    scores = scorer.score(image, case.expected) if scorer is not None else None
    level: Level | None = None
    reason: str | None = None
    if scores is not None:
        missing = [e for e, s in scores.items() if s < case.tolerance.element_score]
        if missing:
            level = Level.A
            reason = f"below {case.tolerance.element_score}: {', '.join(missing)}"
    return CheckOutcome(level, reason, scores, drift, drifted)
