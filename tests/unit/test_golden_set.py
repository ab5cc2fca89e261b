"""The golden set file: the repository's 200 cases, and clear errors for bad files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from analysis.golden.cases import Category, GoldenSetError, load_golden_set, parse_golden_set
from canary.settings import Settings
from tests.golden_fixtures import small_set_text

SETTINGS = Settings()


def test_the_repository_set_has_200_cases_50_per_category() -> None:
    golden_set = load_golden_set(SETTINGS.golden_set_file, SETTINGS)
    assert len(golden_set.cases) == 200
    assert Counter(case.category for case in golden_set.cases) == {c: 50 for c in Category}
    assert len({case.seed for case in golden_set.cases}) == 200
    for case in golden_set.cases:
        assert set(case.levels) == {"S", "A", "B"}
        assert case.expected and case.tolerance.drift > 0
    assert len(golden_set.sha256) == 64


def test_the_hash_changes_with_any_edit() -> None:
    text = small_set_text()
    one = parse_golden_set(text, SETTINGS)
    two = parse_golden_set(text.replace("soft light", "soft  light"), SETTINGS)
    assert one.sha256 != two.sha256
    assert parse_golden_set(text, SETTINGS).sha256 == one.sha256


def errors_of(text: str) -> list[str]:
    with pytest.raises(GoldenSetError) as caught:
        parse_golden_set(text, SETTINGS, "golden.yaml")
    return caught.value.errors


def test_errors_name_the_case_and_field() -> None:
    text = small_set_text().replace("category: material_detail", "category: materials")
    [error] = errors_of(text)
    assert error.startswith("case 'material-001' (cases.2).category:")
    assert "pose_control" in error


def test_gateway_limits_apply_to_cases() -> None:
    text = small_set_text().replace("  width: 64", "  width: 65")
    errors = errors_of(text)
    assert len(errors) == 4
    assert errors[0] == "case 'pose-001' (cases.0).width: must be a multiple of 8, got 65"


def test_duplicate_ids_missing_levels_and_empty_elements() -> None:
    text = small_set_text().replace("id: style-001", "id: pose-001")
    assert errors_of(text) == ["case 'pose-001' (cases.3).id: duplicate of cases.0"]
    text = small_set_text().replace("  levels: {S: severe distortion or NSFW}\n", "")
    errors = errors_of(text)
    assert errors[0] == "case 'pose-001' (cases.0).levels: no definition for S"
    text = small_set_text().replace("[a red cube, soft light]", "[a red cube, ' ']", 1)
    assert "elements must not be empty" in errors_of(text)[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\nformat: 2\ncases: []\n", "format"),
        ("- just a list\n", "mapping"),
        ("name: [unclosed\n", "not valid YAML"),
        ("name: x\nformat: 1\ncases:\n  - {id: Bad Id, category: pose_control}\n", "Bad Id"),
    ],
)
def test_malformed_files(text: str, expected: str) -> None:
    assert any(expected in error for error in errors_of(text))


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(GoldenSetError, match="cannot read"):
        load_golden_set(tmp_path / "missing.yaml", SETTINGS)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(GoldenSetError, match="not UTF-8"):
        load_golden_set(binary, SETTINGS)
