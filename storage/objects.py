"""Object storage for rendered images: one interface, two backends chosen by URL.

``open_store(url)`` accepts

* ``file:///absolute/path`` or ``file://relative/path`` -> :class:`LocalStore`
  (a directory; the path is taken literally, not percent-decoded, as
  ``Settings.resolved_storage_url`` writes it);
* ``s3://bucket`` or ``s3://bucket/prefix`` -> :class:`S3Store` (every key is stored
  under ``prefix/`` and reported relative to it).

Keys are ``/``-separated relative paths and are validated identically by both backends
(:func:`validate_key`), so a key that works on a laptop also works on S3 and vice versa.
"""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from botocore.client import BaseClient

    from canary.settings import Settings

__all__ = [
    "MAX_PRESIGN_EXPIRY_S",
    "LocalStore",
    "ObjectNotFound",
    "ObjectStore",
    "S3Store",
    "open_store",
    "store_from_settings",
    "validate_key",
    "validate_prefix",
]

#: Files LocalStore is still writing end with this; keys may not, so they never clash.
TEMP_SUFFIX = ".canary-tmp"
#: SigV4 presigned URLs are valid for at most seven days.
MAX_PRESIGN_EXPIRY_S = 7 * 24 * 3600
ACCEPTED_URLS = "file:///absolute/path, file://relative/path, s3://bucket or s3://bucket/prefix"
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})


class ObjectNotFound(LookupError):
    """No object is stored under ``key``."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no object stored under key {key!r}")
        self.key = key


def _check_segments(value: str, what: str, *, allow_trailing_slash: bool) -> None:
    if "\x00" in value:
        raise ValueError(f"{what} {value!r} contains a NUL character")
    if value.startswith("/"):
        raise ValueError(f"{what} {value!r} must be relative (no leading '/')")
    segments = value.split("/")
    if allow_trailing_slash and segments[-1] == "":
        segments = segments[:-1]
    for segment in segments:
        if segment in ("", ".", ".."):
            raise ValueError(
                f"{what} {value!r} has an empty, '.' or '..' path segment; "
                "use plain names separated by single '/'"
            )


def validate_key(key: str) -> str:
    """Return ``key`` if it is a valid object key, else raise ``ValueError``.

    A key is a non-empty relative path of ``/``-separated names: no leading ``/``, no
    empty, ``.`` or ``..`` segments (so no trailing ``/``), no NUL, and it may not end
    with the reserved temp-file suffix.
    """
    if not isinstance(key, str):
        raise TypeError(f"object key must be a str, not {type(key).__name__}")
    if not key:
        raise ValueError("object key must not be empty")
    _check_segments(key, "object key", allow_trailing_slash=False)
    if key.endswith(TEMP_SUFFIX):
        raise ValueError(f"object key {key!r} ends with the reserved suffix {TEMP_SUFFIX!r}")
    return key


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a valid listing prefix (``""``, ``"a/"``, ``"a/b"``...)."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    if prefix:
        # The last segment may be partial ("renders/v" matches "renders/v1/...").
        _check_segments(prefix, "prefix", allow_trailing_slash=True)
    return prefix


def _check_expiry(expires_s: int) -> int:
    if not 1 <= expires_s <= MAX_PRESIGN_EXPIRY_S:
        raise ValueError(f"expires_s must be between 1 and {MAX_PRESIGN_EXPIRY_S}, not {expires_s}")
    return expires_s


@runtime_checkable
class ObjectStore(Protocol):
    """Bytes stored under string keys; implemented by :class:`LocalStore` and :class:`S3Store`."""

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store ``data`` under ``key``, replacing any previous object."""
        ...

    def get(self, key: str) -> bytes:
        """The object's bytes; raises :class:`ObjectNotFound` if there is none."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """All keys starting with ``prefix`` (a plain string prefix), sorted."""
        ...

    def url(self, key: str, expires_s: int) -> str:
        """A URL a client can GET the object from (presigned for S3, ``file://`` locally)."""
        ...

    def describe(self) -> str:
        """Where the objects live, for humans and logs."""
        ...


class LocalStore:
    """Objects as files under ``root``; each write is atomic (temp file + ``os.replace``).

    ``content_type`` is not recorded. Like any filesystem, a key cannot be both an object
    and a "directory" of other keys (``a`` and ``a/b``), which S3 would allow.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        validate_key(key)
        path = self.root.joinpath(*key.split("/"))
        # Catches symlinks inside root that point elsewhere.
        if not path.resolve().is_relative_to(self.root):
            raise ValueError(f"object key {key!r} resolves outside the store root {self.root}")
        return path

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX
        )
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp_name, 0o644)  # mkstemp creates 0600
            os.replace(tmp_name, path)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError:
            if path.is_dir():  # a "directory" of other keys is not an object
                return
            raise

    def list(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)
        # Only walk the directory the prefix pins down; filter the rest by string prefix.
        directory, _, _ = prefix.rpartition("/")
        start = self.root.joinpath(*directory.split("/")) if directory else self.root
        if not start.resolve().is_relative_to(self.root) or not start.is_dir():
            return []
        keys = []
        for dirpath, _dirnames, filenames in os.walk(start):
            relative = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.endswith(TEMP_SUFFIX):
                    continue
                key = name if relative == "." else f"{relative}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def url(self, key: str, expires_s: int) -> str:
        """A ``file://`` URI of the object (``expires_s`` is checked but cannot apply)."""
        _check_expiry(expires_s)
        return self._path(key).as_uri()

    def describe(self) -> str:
        return self.root.as_uri()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"


def make_s3_client(endpoint_url: str | None = None, region: str = "us-east-1") -> BaseClient:
    """A boto3 S3 client with retries, path-style addressing and SigV4.

    Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY``, profile, instance role...).
    """
    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        s3={"addressing_style": "path"},
        signature_version="s3v4",
    )
    # A session per client: boto3's default session is not thread-safe.
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name=region, config=config
    )


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Store:
    """Objects in an S3 bucket (AWS, SeaweedFS, MinIO...), optionally under a key prefix.

    ``prefix`` (e.g. ``"renders/prod"``) is prepended to every key and stripped from
    listed keys. ``list_page_size`` sets the ListObjectsV2 page size (server default,
    usually 1000, when ``None``).
    """

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        client: BaseClient | None = None,
        *,
        prefix: str = "",
        list_page_size: int | None = None,
    ) -> None:
        if not bucket:
            raise ValueError("S3 bucket name must not be empty")
        if list_page_size is not None and list_page_size < 1:
            raise ValueError(f"list_page_size must be positive, not {list_page_size}")
        prefix = prefix.rstrip("/")
        if prefix:
            validate_key(prefix)
        self.bucket = bucket
        self.region = region
        self.prefix = f"{prefix}/" if prefix else ""
        self.list_page_size = list_page_size
        self.client = client if client is not None else make_s3_client(endpoint_url, region)

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (and is accessible with these credentials)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _error_code(exc) not in _NOT_FOUND_CODES | {"NoSuchBucket"}:
                raise
        kwargs: dict[str, object] = {}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self.client.create_bucket(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            code = _error_code(exc)
            if code == "BucketAlreadyOwnedByYou":
                return
            if code == "BucketAlreadyExists":
                # Created concurrently by us, or owned by someone else: head_bucket decides
                # (it raises 403 for a bucket these credentials cannot use).
                self.client.head_bucket(Bucket=self.bucket)
                return
            raise

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.client.put_object(
            Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type
        )

    def get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            # NoSuchBucket is a configuration error, not a missing object: let it surface.
            if _error_code(exc) in _NOT_FOUND_CODES:
                raise ObjectNotFound(key) from None
            raise
        body: bytes = response["Body"].read()
        return body

    def exists(self, key: str) -> bool:
        """Whether the object exists (HEAD cannot tell a missing bucket from a missing key)."""
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _error_code(exc) in _NOT_FOUND_CODES:
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)
        pagination: dict[str, int] = {}
        if self.list_page_size is not None:
            pagination["PageSize"] = self.list_page_size
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix, PaginationConfig=pagination
        )
        strip = len(self.prefix)
        return sorted(item["Key"][strip:] for page in pages for item in page.get("Contents", []))

    def url(self, key: str, expires_s: int) -> str:
        """A presigned GET URL valid for ``expires_s`` seconds (at most seven days)."""
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=_check_expiry(expires_s),
        )
        return url

    def describe(self) -> str:
        from canary.settings import mask_url

        return f"s3://{self.bucket}/{self.prefix} @ {mask_url(self.client.meta.endpoint_url)}"

    def __repr__(self) -> str:
        return f"S3Store({self.bucket!r}, prefix={self.prefix!r})"


def open_store(
    url: str, *, endpoint_url: str | None = None, region: str = "us-east-1"
) -> ObjectStore:
    """The store a storage URL names; see the module docstring for the accepted forms.

    S3 buckets are not created here; call :meth:`S3Store.ensure_bucket` where appropriate.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if sep and scheme == "file":
        if not rest:
            raise ValueError(f"storage URL {url!r} names no directory; expected {ACCEPTED_URLS}")
        return LocalStore(Path(rest))
    if sep and scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET_RE.match(bucket):
            raise ValueError(
                f"storage URL {url!r} has no valid bucket name (got {bucket!r}); "
                f"expected {ACCEPTED_URLS}"
            )
        try:
            return S3Store(bucket, endpoint_url=endpoint_url, region=region, prefix=prefix)
        except ValueError as exc:
            raise ValueError(f"storage URL {url!r} has an invalid key prefix: {exc}") from None
    raise ValueError(f"unsupported storage URL {url!r}; expected {ACCEPTED_URLS}")


def store_from_settings(settings: Settings) -> ObjectStore:
    """The store configured by ``STORAGE_URL`` / ``S3_ENDPOINT_URL`` / ``S3_REGION``.

    Callers pass ``settings.presign_expiry_s`` to :meth:`ObjectStore.url` themselves.
    """
    return open_store(
        settings.resolved_storage_url,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
    )
