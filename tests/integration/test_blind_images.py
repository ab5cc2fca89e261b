"""The A/B test stays blind: nothing a client key receives names the version that served
it (issue 17), with images in S3 (SeaweedFS) where clients get presigned URLs.

The versions have names that cannot occur by chance in URLs, signatures or PNG bytes, so
"the version's name appears nowhere" is checked literally, on every byte received. Their
shared three-letter prefix is looked for everywhere except in image bytes: compressed pixels
hold some given three bytes by chance often enough to fail one run in a few hundred.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from PIL import Image
from sqlmodel import Session

from gateway.auth import create_key
from gateway.http.app import create_app
from gateway.service import Gateway
from storage.db import get_engine, init_db
from storage.images import image_key, legacy_image_key, rekey
from storage.models import ApiKeyRole, Job, JobStatus
from storage.objects import ObjectStore, open_store
from tasks.app import make_app
from tasks.tiny_model import make_tiny_model
from tests.http_server import serve
from tests.integration.conftest import PROJECT_ROOT, Stack, make_stack

pytestmark = pytest.mark.integration

BASELINE, CANDIDATE = "qz7-ochre", "qz7-teal"
JOB = {"user_id": "u-blind", "prompt": "a lantern in fog", "steps": 3, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def blind_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("blind-models")
    for seed, version in enumerate((BASELINE, CANDIDATE), start=1):
        make_tiny_model(root / version, seed)
    return root


@pytest.fixture
def s3_blind_stack(
    tmp_path: Path, clean_redis: str, blind_models: Path, s3_bucket_url: tuple[str, str]
) -> Iterator[Stack]:
    """Everyone goes to the candidate (stage 100%); images in a fresh S3 bucket."""
    storage_url, endpoint = s3_bucket_url
    experiment_file = tmp_path / "experiments.yaml"
    experiment_file.write_text(
        yaml.safe_dump(
            {
                "default_version": BASELINE,
                "experiments": [
                    {
                        "name": "blind-canary",
                        "seed": "blind",
                        "baseline": BASELINE,
                        "candidate": CANDIDATE,
                        "stages": [{"name": "all", "shares": {"default": 1.0}}],
                        "stage": "all",
                    }
                ],
            }
        )
    )
    database_url = f"sqlite:///{tmp_path / 'canary.db'}"
    init_db(get_engine(database_url))
    stack = make_stack(
        tmp_path,
        clean_redis,
        database_url,
        storage_url,
        blind_models,
        S3_ENDPOINT_URL=endpoint,
        CANARY_VERSIONS=f"{BASELINE},{CANDIDATE}",
        CANARY_EXPERIMENT_FILE=str(experiment_file),
    )
    stack.settings = stack.settings.model_copy(
        update={"versions": [BASELINE, CANDIDATE], "experiment_file": experiment_file}
    )
    stack.app = make_app(stack.settings)
    yield stack
    stack.stop_workers()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _seen(response: httpx.Response) -> list[tuple[str, bool]]:
    """Everything a response tells its receiver (URL, status, headers, body), each part with
    whether it is image bytes."""
    headers = "\n".join(f"{name}: {value}" for name, value in response.headers.multi_items())
    is_image = response.headers.get("content-type", "").startswith("image/")
    return [
        (f"{response.url}\n{response.status_code}\n{headers}", False),
        (response.content.decode("latin-1"), is_image),
    ]


def _assert_blind(seen: list[tuple[str, bool]]) -> None:
    for text, is_image in seen:
        names = (BASELINE, CANDIDATE) if is_image else (BASELINE, CANDIDATE, "qz7")
        for name in names:
            found = name in text if is_image else name in text.lower()
            assert not found, f"{name!r} leaked to a client in:\n{text[:3000]}"


def test_a_client_learns_nothing_of_the_version_operators_find_it(s3_blind_stack: Stack) -> None:
    stack = s3_blind_stack
    stack.start_worker(CANDIDATE)
    _, client_token = create_key(stack.engine, "app", ApiKeyRole.CLIENT)
    _, operator_token = create_key(stack.engine, "ops", ApiKeyRole.OPERATOR)
    seen: list[tuple[str, bool]] = []
    with (
        serve(create_app(stack.settings)) as base,
        httpx.Client(base_url=base, headers=_auth(client_token), timeout=90) as client,
        httpx.Client(base_url=base, headers=_auth(operator_token), timeout=90) as operator,
        httpx.Client(timeout=30) as anonymous,  # what a browser does with a presigned URL
    ):
        accepted = client.post("/v1/jobs", json=JOB)
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        polled = client.get(f"/v1/jobs/{job_id}", params={"wait": 60})
        job = polled.json()
        assert job["status"] == "SUCCEEDED", job
        assert job["image_url"].startswith(stack.settings.s3_endpoint_url)  # presigned
        from_s3 = anonymous.get(job["image_url"])
        assert from_s3.status_code == 200 and from_s3.content[:4] == b"\x89PNG"
        redirect = client.get(f"/v1/jobs/{job_id}/image", follow_redirects=False)
        assert redirect.status_code == 307
        followed = anonymous.get(redirect.headers["location"])
        assert followed.content == from_s3.content
        png = Image.open(io.BytesIO(followed.content))
        batch = client.post("/v1/jobs:batch", json={"jobs": [{**JOB, "seed": 7}]})
        assert batch.status_code == 202, batch.text
        batch_id = batch.json()["batch_id"]
        stack.wait_finished([batch.json()["jobs"][0]["job_id"]])
        report = client.get(f"/v1/batches/{batch_id}")
        assert report.json()["images_total"] == 1, report.text
        for response in (accepted, polled, from_s3, redirect, followed, batch, report):
            seen += _seen(response)
        seen.append((json.dumps({**png.info, **getattr(png, "text", {})}, default=str), False))
        _assert_blind(seen)

        # operators still see which version served the job, and find it by version
        operated = operator.get(f"/v1/jobs/{job_id}").json()
        assert (operated["model_version"], operated["arm"]) == (CANDIDATE, "candidate")
    listed = subprocess.run(
        [sys.executable, "-m", "canary.cli", "images", "list", "--model-version", CANDIDATE],
        env=stack.env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert f"{job_id}\t{image_key(job_id)}" in listed.stdout.splitlines()


# ---------------------------------------------------------------- legacy keys


def _legacy_job(engine, store: ObjectStore, api_key_id: str, version: str = "v1") -> str:  # type: ignore[no-untyped-def]
    """A job recorded before keys became blind: its image under renders/<version>/."""
    job_id = str(uuid.uuid4())
    store.put(legacy_image_key(version, job_id), b"\x89PNG old", content_type="image/png")
    with Session(engine) as session:
        session.add(
            Job(
                id=job_id,
                model_version=version,
                prompt="p",
                seed=1,
                steps=1,
                guidance=7.5,
                width=64,
                height=64,
                status=JobStatus.SUCCEEDED,
                image_key=legacy_image_key(version, job_id),
                api_key_id=api_key_id,
            )
        )
        session.commit()
    return job_id


@pytest.fixture(params=["s3", "local"])
def store_and_engine(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[ObjectStore, object, str, str | None]]:
    database_url = f"sqlite:///{tmp_path / 'canary.db'}"
    init_db(get_engine(database_url))
    if request.param == "local":
        url = f"file://{tmp_path / 'objects'}"
        yield open_store(url), get_engine(database_url), url, None
        return
    server = request.getfixturevalue("s3_server")
    bucket = server.create_bucket()
    url = f"s3://{bucket}"
    yield (
        open_store(url, endpoint_url=server.endpoint_url),
        get_engine(database_url),
        url,
        (server.endpoint_url),
    )
    server.delete_bucket(bucket)


def test_legacy_images_are_served_blind_and_rekeyed(store_and_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from canary.settings import Settings

    store, engine, storage_url, endpoint = store_and_engine
    settings = Settings(
        database_url=str(engine.url),
        storage_url=storage_url,
        s3_endpoint_url=endpoint,
        home=tmp_path / "home",
        versions=["v1", "v2"],
    )
    client_key, client_token = create_key(engine, "app", ApiKeyRole.CLIENT)
    old = [_legacy_job(engine, store, client_key.id) for _ in range(3)]
    _, operator_token = create_key(engine, "ops", ApiKeyRole.OPERATOR)
    gateway = Gateway(settings, engine, make_app(settings))
    with TestClient(create_app(settings, gateway=gateway, store=store)) as api:
        # before the migration: a client is served the old image through the API
        job = api.get(f"/v1/jobs/{old[0]}", headers=_auth(client_token)).json()
        assert job["image_url"].endswith(f"/v1/jobs/{old[0]}/image")
        image = api.get(job["image_url"], headers=_auth(client_token), follow_redirects=False)
        assert image.status_code == 200 and image.content == b"\x89PNG old"
        assert "renders/v1" not in str(image.headers)

        # an interrupted earlier run: copied and recorded, old object not yet deleted
        store.put(image_key(old[2]), store.get(legacy_image_key("v1", old[2])))
        with Session(engine) as session:
            row = session.get(Job, old[2])
            assert row is not None
            row.image_key = image_key(old[2])
            session.add(row)
            session.commit()
        outcome = rekey(engine, store)
        assert (outcome.moved, outcome.missing, outcome.swept, outcome.errors) == (2, 0, 1, [])
        assert store.list("renders/") == sorted(image_key(job_id) for job_id in old)
        again = rekey(engine, store)  # idempotent
        assert (again.moved, again.missing, again.swept) == (0, 0, 0)

        for job_id in old:
            body = api.get(f"/v1/jobs/{job_id}", headers=_auth(client_token)).json()
            assert "v1" not in body["image_url"].split("?")[0].replace("/v1/jobs/", "")
            fetched = api.get(
                f"/v1/jobs/{job_id}/image", headers=_auth(client_token), follow_redirects=False
            )
            if endpoint is None:  # local storage: streamed by the API
                assert fetched.content == b"\x89PNG old"
            else:  # S3: redirected to the presigned URL of the blind key
                assert fetched.status_code == 307
                assert f"/{image_key(job_id)}?" in fetched.headers["location"]
                assert httpx.get(fetched.headers["location"]).content == b"\x89PNG old"
            seen = api.get(f"/v1/jobs/{job_id}", headers=_auth(operator_token)).json()
            assert seen["model_version"] == "v1"
