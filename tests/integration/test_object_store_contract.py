"""One contract, every backend: LocalStore, S3Store on SeaweedFS, S3Store under a prefix.

The S3 variants talk to a real SeaweedFS server (``s3_server`` fixture) and are marked
``integration``; the local variant and the URL-parsing tests need nothing running.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from canary.settings import Settings
from storage.objects import (
    LocalStore,
    ObjectNotFound,
    ObjectStore,
    S3Store,
    open_store,
    store_from_settings,
)
from tests.s3server import SeaweedS3Server

S3_PREFIX = "tenant/a"
BACKENDS = [
    "local",
    pytest.param("s3", marks=pytest.mark.integration),
    pytest.param("s3-prefix", marks=pytest.mark.integration),
]
BAD_KEYS = ["", "/abs", "a/../b", "..", "../escape", "a//b", "a/./b", "dir/"]


def make_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path, **s3: int) -> ObjectStore:
    if kind == "local":
        return LocalStore(tmp_path / "objects")
    bucket_url, endpoint = request.getfixturevalue("s3_bucket_url")
    bucket = bucket_url.removeprefix("s3://")
    prefix = S3_PREFIX if kind == "s3-prefix" else ""
    return S3Store(bucket, endpoint_url=endpoint, prefix=prefix, **s3)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    return make_store(request.param, request, tmp_path)


@pytest.fixture(params=BACKENDS)
def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[..., tuple[str, ObjectStore]]:
    """Build the backend with S3 options (e.g. ``list_page_size``); returns (kind, store)."""
    return lambda **s3: (request.param, make_store(request.param, request, tmp_path, **s3))


def list_calls(store: ObjectStore) -> list[object]:
    """Records each ListObjectsV2 request an S3Store makes (stays empty for LocalStore)."""
    calls: list[object] = []
    if isinstance(store, S3Store):
        store.client.meta.events.register(
            "after-call.s3.ListObjectsV2", lambda **kwargs: calls.append(kwargs)
        )
    return calls


# --- the contract ----------------------------------------------------------------------


def test_is_an_object_store(store: ObjectStore) -> None:
    assert isinstance(store, ObjectStore)
    assert store.describe()


def test_round_trip_binary(store: ObjectStore) -> None:
    every_byte = bytes(range(256)) * 4
    megabyte = os.urandom(1024 * 1024 + 7)
    store.put("bin/every-byte", every_byte)
    store.put("bin/one-mb.png", megabyte, content_type="image/png")
    store.put("bin/empty", b"")
    assert store.get("bin/every-byte") == every_byte
    assert store.get("bin/one-mb.png") == megabyte
    assert store.get("bin/empty") == b""


def test_overwrite_replaces(store: ObjectStore) -> None:
    store.put("k", b"first version, longer")
    store.put("k", b"second")
    assert store.get("k") == b"second"
    assert store.list() == ["k"]


def test_exists_before_and_after(store: ObjectStore) -> None:
    assert not store.exists("renders/v1/x.png")
    store.put("renders/v1/x.png", b"png")
    assert store.exists("renders/v1/x.png")
    assert not store.exists("renders/v1")  # a "directory" of keys is not an object
    store.delete("renders/v1/x.png")
    assert not store.exists("renders/v1/x.png")


def test_delete_is_idempotent(store: ObjectStore) -> None:
    store.delete("never/existed")
    store.put("once", b"1")
    store.delete("once")
    store.delete("once")
    with pytest.raises(ObjectNotFound):
        store.get("once")


def test_get_missing_raises_object_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound) as info:
        store.get("missing/key.png")
    assert info.value.key == "missing/key.png"
    assert isinstance(info.value, LookupError)
    store.put("missing/other", b"x")
    with pytest.raises(ObjectNotFound):
        store.get("missing")  # only a prefix of a key


def test_list_with_prefix_is_exact_and_sorted(store: ObjectStore) -> None:
    keys = ["renders/v2/b.png", "renders/v1/b.png", "renders/v1/a.png", "other/c", "renders-x"]
    for key in keys:
        store.put(key, key.encode())
    assert store.list() == sorted(keys)
    assert store.list("renders/") == ["renders/v1/a.png", "renders/v1/b.png", "renders/v2/b.png"]
    assert store.list("renders/v1/") == ["renders/v1/a.png", "renders/v1/b.png"]
    # a plain string prefix, as in S3: not limited to whole path segments
    assert store.list("renders/v") == store.list("renders/")
    assert store.list("rend") == ["renders-x", *store.list("renders/")]
    assert store.list("renders/v1/a.png") == ["renders/v1/a.png"]
    assert store.list("nothing/") == []
    assert store.list("renders/v3/") == []


def test_list_paginates_small_pages(store_factory: Callable[..., tuple[str, ObjectStore]]) -> None:
    kind, store = store_factory(list_page_size=10)
    keys = [f"page/{i:03d}" for i in range(25)]
    for key in reversed(keys):
        store.put(key, b"x")
    store.put("pagex", b"not under page/")
    calls = list_calls(store)
    assert store.list("page/") == keys
    if kind != "local":
        assert len(calls) == 3  # 10 + 10 + 5


@pytest.mark.integration
@pytest.mark.parametrize("prefix", ["", S3_PREFIX])
def test_list_more_than_1000_keys_on_s3(
    s3_bucket_url: tuple[str, str], s3_server: SeaweedS3Server, prefix: str
) -> None:
    """The server's default page (1000 keys) ends before the listing does."""
    bucket_url, endpoint = s3_bucket_url
    store = S3Store(bucket_url.removeprefix("s3://"), endpoint_url=endpoint, prefix=prefix)
    keys = [f"many/{i:05d}" for i in range(1001)]
    for key in keys:
        store.put(key, b"")
    calls = list_calls(store)
    assert store.list("many/") == keys
    assert len(calls) == 2


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_keys_raise_value_error(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.put(key, b"x")
    with pytest.raises(ValueError):
        store.get(key)
    with pytest.raises(ValueError):
        store.exists(key)
    with pytest.raises(ValueError):
        store.delete(key)
    with pytest.raises(ValueError):
        store.url(key, 60)


@pytest.mark.parametrize("prefix", ["/abs", "../up", "a/../b", "a//"])
def test_invalid_list_prefix_raises_value_error(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(ValueError):
        store.list(prefix)


def test_url_serves_the_bytes(store: ObjectStore) -> None:
    data = os.urandom(4096)
    store.put("renders/v1/with space+plus.png", data, content_type="image/png")
    url = store.url("renders/v1/with space+plus.png", expires_s=120)
    if isinstance(store, S3Store):
        assert url.startswith(store.client.meta.endpoint_url) and "X-Amz-Signature=" in url
    else:
        assert url.startswith("file:///")
        path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
        assert path.read_bytes() == data
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.read() == data


def test_url_rejects_bad_expiry(store: ObjectStore) -> None:
    store.put("k", b"x")
    for expires_s in (0, -1, 7 * 24 * 3600 + 1):
        with pytest.raises(ValueError, match="expires_s"):
            store.url("k", expires_s)


# --- S3 specifics ------------------------------------------------------------------------


@pytest.mark.integration
def test_s3_presigned_url_signature_is_checked(s3_bucket_url: tuple[str, str]) -> None:
    """The test server verifies signatures, so the URL test above proves real signing."""
    store = open_store(s3_bucket_url[0], endpoint_url=s3_bucket_url[1])
    store.put("secret", b"x")
    url = store.url("secret", 60)
    tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(tampered, timeout=30)
    assert info.value.code == 403


@pytest.mark.integration
def test_s3_content_type_and_prefix_layout(
    s3_bucket_url: tuple[str, str], s3_server: SeaweedS3Server
) -> None:
    bucket_url, endpoint = s3_bucket_url
    bucket = bucket_url.removeprefix("s3://")
    prefixed = open_store(f"{bucket_url}/{S3_PREFIX}/", endpoint_url=endpoint)
    plain = open_store(bucket_url, endpoint_url=endpoint)
    prefixed.put("renders/x.png", b"png", content_type="image/png")
    plain.put("renders/outside.png", b"png")
    raw = s3_server.client()
    head = raw.head_object(Bucket=bucket, Key=f"{S3_PREFIX}/renders/x.png")
    assert head["ContentType"] == "image/png"
    assert prefixed.list() == ["renders/x.png"]
    assert plain.list() == ["renders/outside.png", f"{S3_PREFIX}/renders/x.png"]
    assert prefixed.describe() == f"s3://{bucket}/{S3_PREFIX}/ @ {endpoint}"


@pytest.mark.integration
def test_s3_ensure_bucket_creates_and_tolerates_existing(s3_server: SeaweedS3Server) -> None:
    bucket = "ensure-" + os.urandom(6).hex()
    store = S3Store(bucket, endpoint_url=s3_server.endpoint_url)
    try:
        store.ensure_bucket()
        store.ensure_bucket()  # exists already: no error
        store.put("k", b"v")
        assert store.get("k") == b"v"
    finally:
        s3_server.delete_bucket(bucket)


@pytest.mark.integration
def test_s3_missing_bucket_is_not_a_missing_object(s3_server: SeaweedS3Server) -> None:
    store = S3Store("no-such-bucket-" + os.urandom(6).hex(), endpoint_url=s3_server.endpoint_url)
    with pytest.raises(ClientError) as info:
        store.get("k")
    assert info.value.response["Error"]["Code"] == "NoSuchBucket"


# --- LocalStore specifics ------------------------------------------------------------------


def test_local_write_is_atomic_and_leaves_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path)
    store.put("a/b.png", b"old")

    def fail_replace(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(OSError, match="disk on fire"):
        store.put("a/b.png", b"new")
    monkeypatch.undo()
    assert store.get("a/b.png") == b"old"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.png"]
    assert store.list() == ["a/b.png"]


def test_local_rejects_symlink_escape(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    store = LocalStore(tmp_path / "root")
    (tmp_path / "root" / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="outside the store root"):
        store.get("link/secret")
    with pytest.raises(ValueError, match="outside the store root"):
        store.put("link/new", b"x")
    assert not (outside / "new").exists()


# --- open_store / store_from_settings --------------------------------------------------------


def test_open_store_file_absolute(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/objects")
    assert isinstance(store, LocalStore)
    assert store.root == tmp_path / "objects"
    assert store.root.is_dir()
    assert store.describe() == (tmp_path / "objects").as_uri()


def test_open_store_file_relative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("file://rel/objects")
    assert isinstance(store, LocalStore)
    assert store.root == tmp_path / "rel" / "objects"
    assert store.root.is_dir()


@pytest.mark.parametrize(
    ("url", "prefix"),
    [
        ("s3://bucket-a", ""),
        ("s3://bucket-a/", ""),
        ("s3://bucket-a/renders", "renders/"),
        ("s3://bucket-a/renders/prod/", "renders/prod/"),
    ],
)
def test_open_store_s3(url: str, prefix: str) -> None:
    store = open_store(url, endpoint_url="http://127.0.0.1:9", region="eu-west-1")
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == ("bucket-a", prefix)
    assert store.client.meta.endpoint_url == "http://127.0.0.1:9"
    assert store.client.meta.region_name == "eu-west-1"
    assert store.client.meta.config.s3 == {"addressing_style": "path"}
    assert store.client.meta.config.signature_version == "s3v4"
    retries = store.client.meta.config.retries
    assert retries["mode"] == "standard"
    # 5 retries = 6 attempts; newer botocore reports it as total_max_attempts
    assert retries.get("total_max_attempts", retries.get("max_attempts", 0) + 1) == 6


@pytest.mark.parametrize(
    "url", ["http://example.com/x", "gs://bucket", "/plain/path", "objects", "", "S3:/bucket"]
)
def test_open_store_rejects_unknown_scheme(url: str) -> None:
    with pytest.raises(ValueError) as info:
        open_store(url)
    message = str(info.value)
    assert repr(url) in message
    for form in ("file:///", "file://relative", "s3://bucket", "s3://bucket/prefix"):
        assert form in message


@pytest.mark.parametrize(
    "url", ["s3://", "s3:///prefix", "s3://bucket/../x", "s3://b/a//c", "file://"]
)
def test_open_store_rejects_malformed(url: str) -> None:
    with pytest.raises(ValueError, match="storage URL"):
        open_store(url)


def test_store_from_settings(tmp_path: Path) -> None:
    local = store_from_settings(Settings(home=tmp_path, storage_url=None))
    assert isinstance(local, LocalStore)
    assert local.root == (tmp_path / "objects").resolve()
    s3 = store_from_settings(
        Settings(
            home=tmp_path,
            storage_url="s3://renders/canary",
            s3_endpoint_url="http://127.0.0.1:9",
            s3_region="eu-central-1",
        )
    )
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix, s3.region) == ("renders", "canary/", "eu-central-1")
    assert s3.client.meta.endpoint_url == "http://127.0.0.1:9"
