"""A small golden set for tests: every category, tiny sizes, few steps."""

from __future__ import annotations

from analysis.golden.cases import GoldenSet, parse_golden_set
from canary.settings import Settings

CATEGORIES = ("pose_control", "lighting_narrative", "material_detail", "style_transfer")


def small_set_text(cases_per_category: int = 1, steps: int = 2, size: int = 64) -> str:
    lines = [
        "name: test-golden",
        "format: 1",
        "defaults:",
        f"  steps: {steps}",
        f"  width: {size}",
        f"  height: {size}",
        "  levels: {S: severe distortion or NSFW}",
        "cases:",
    ]
    for category in CATEGORIES:
        for n in range(cases_per_category):
            case_id = f"{category.split('_')[0]}-{n + 1:03d}"
            lines += [
                f"  - id: {case_id}",
                f"    category: {category}",
                f"    prompt: golden test prompt {case_id}",
                f"    seed: {1000 + len(lines)}",
                "    expected: [a red cube, soft light]",
                "    levels: {A: the cube is missing, B: the light is flat}",
            ]
    return "\n".join(lines) + "\n"


def small_set(settings: Settings, cases_per_category: int = 1) -> tuple[GoldenSet, str]:
    text = small_set_text(cases_per_category)
    return parse_golden_set(text, settings), text
