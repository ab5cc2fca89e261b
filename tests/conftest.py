"""Fixtures shared by all test packages."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.s3server import SeaweedS3Server, find_weed

# ==== S3 (SeaweedFS) fixtures: begin ==================================================
# A real S3 server (SeaweedFS) for the whole session, started only when a test asks for
# it. While it runs, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY hold its credentials, so
# boto3 here and in subprocesses started with a copy of os.environ can sign requests.

_AWS_ENV_CLEARED = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedS3Server]:
    """The running SeaweedFS S3 server; credentials are in os.environ for the session."""
    try:
        find_weed()
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    with SeaweedS3Server() as server, pytest.MonkeyPatch.context() as patch:
        for name, value in server.credentials_env().items():
            patch.setenv(name, value)
        for name in _AWS_ENV_CLEARED:  # a developer's own AWS session must not leak in
            patch.delenv(name, raising=False)
        yield server


@pytest.fixture
def s3_bucket_url(s3_server: SeaweedS3Server) -> Iterator[tuple[str, str]]:
    """A fresh empty bucket as ``("s3://<bucket>", endpoint_url)``; deleted afterwards."""
    bucket = s3_server.create_bucket()
    yield f"s3://{bucket}", s3_server.endpoint_url
    s3_server.delete_bucket(bucket)


# ==== S3 (SeaweedFS) fixtures: end ====================================================
