"""Property-based fuzz of the HTTP API from its own OpenAPI schema: no input gives a 5xx.

Cases come from schemathesis' Hypothesis strategies for every operation in the served
schema, sent with an operator key and with none. (schemathesis' own pytest plugin does
not yet work with pytest 9, so the operations are driven with ``hypothesis.given``.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from gateway.api import create_app
from gateway.auth import create_key
from storage.db import get_engine, init_db
from storage.models import ApiKeyRole
from tests.integration.conftest import fresh_database_url, make_stack

pytestmark = pytest.mark.integration


def test_no_input_causes_a_server_error(tmp_path: Path, clean_redis: str, model_dir: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'fuzz.db'}"
    init_db(get_engine(database_url))
    stack = make_stack(tmp_path, clean_redis, database_url, f"file://{tmp_path / 'o'}", model_dir)
    _, token = create_key(stack.engine, "fuzzer", ApiKeyRole.OPERATOR)
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(stack.settings))
    seen: dict[str, set[int]] = {}

    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {
        "POST /v1/jobs",
        "POST /v1/jobs:batch",
        "GET /v1/jobs/{job_id}",
        "GET /v1/jobs/{job_id}/image",
    }
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        def no_server_error(case: schemathesis.Case) -> None:
            for headers in ({"Authorization": f"Bearer {token}"}, {}):
                response = case.call(headers=headers)
                seen.setdefault(case.operation.label, set()).add(response.status_code)
                assert response.status_code < 500, (case.as_curl_command(), response.text)

        no_server_error()
    # the fuzz reached past authentication, not only the 401 wall
    assert 422 in seen["POST /v1/jobs"] and 404 in seen["GET /v1/jobs/{job_id}"], seen


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_accepted_shapes_with_arbitrary_text_never_fail(
    database: str, tmp_path: Path, clean_redis: str, model_dir: Path, postgres_schema_url: str
) -> None:
    """Schema-valid jobs with arbitrary strings reach the database and the broker unharmed."""
    from fastapi.testclient import TestClient
    from hypothesis import strategies as st

    database_url = fresh_database_url(database, tmp_path, postgres_schema_url)
    stack = make_stack(tmp_path, clean_redis, database_url, f"file://{tmp_path / 'o'}", model_dir)
    _, token = create_key(stack.engine, "fuzzer", ApiKeyRole.CLIENT)
    client = TestClient(create_app(stack.settings))
    text = st.text(min_size=1, max_size=300)
    codes: list[int] = []

    @given(
        user_id=st.text(min_size=1, max_size=200),
        prompt=text,
        negative_prompt=st.text(max_size=300),
        key=st.none() | st.text(min_size=1, max_size=200),
        seed=st.none() | st.integers(0, 2**63 - 1),
        size=st.sampled_from([64, 128, 512, 1024]),
        attributes=st.none()
        | st.fixed_dictionaries(
            {"generations_7d": st.integers(0, 10**6), "style_tag_uses": st.integers(0, 10**6)}
        ),
    )
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    def submit(user_id, prompt, negative_prompt, key, seed, size, attributes) -> None:  # type: ignore[no-untyped-def]
        body = {
            "user_id": user_id,
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "seed": seed,
            "width": size,
            "height": size,
            "idempotency_key": key,
            "user_attributes": attributes,
        }
        response = client.post("/v1/jobs", json=body, headers={"X-API-Key": token})
        codes.append(response.status_code)
        assert response.status_code in (200, 202, 422), (body, response.text)

    submit()
    assert codes.count(202) > len(codes) / 2, codes
