"""The worker image's locked dependencies: resolvable for its platform, in line with
pyproject.toml, installed by the Dockerfile exactly as locked."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "worker_images" / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\]+)", re.M)
# the image: CPython 3.11 on linux x86_64
IMAGE_ENVIRONMENT = {
    "python_version": "3.11",
    "sys_platform": "linux",
    "platform_machine": "x86_64",
}


def pins(text: str) -> dict[str, str]:
    return {canonicalize_name(name): version for name, version in PIN.findall(text)}


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] + project["optional-dependencies"]["gpu"]
    return [
        r for r in map(Requirement, listed)
        if r.marker is None or r.marker.evaluate(IMAGE_ENVIRONMENT)
    ]  # fmt: skip


def test_every_pin_satisfies_pyproject_and_carries_hashes() -> None:
    text = LOCK.read_text()
    locked = pins(text)
    for requirement in project_requirements():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is in pyproject.toml but not in the lock"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"lock pins {name}=={locked[name]}, pyproject.toml asks {requirement.specifier}"
        )
    # the versions that must fit together: diffusers 0.42 and transformers 5 need torch
    # >= 2.6; xformers wheels are built for one torch line
    assert int(locked["torch"].split(".")[1]) >= 10 and locked["torch"].startswith("2.")
    assert locked["xformers"] and locked["diffusers"] and locked["transformers"]
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    unhashed = [b.split("==")[0] for b in blocks if "==" in b and "--hash=sha256:" not in b]
    assert unhashed == []


def test_dockerfile_installs_exactly_the_lock_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "worker_images" / "Dockerfile").read_text()
    assert "pytorch/pytorch" not in dockerfile  # a base image's own torch would not match
    assert re.search(r"pip install .*--require-hashes --no-deps -r requirements.lock", dockerfile)
    assert re.search(r"pip install .*--no-deps \.$", dockerfile, re.M)  # the project alone
    assert "xformers" not in re.sub(r"#.*", "", dockerfile)  # nothing installed beside it
    user = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert user and user[-1] not in {"root", "0"}
    assert re.search(r"^HEALTHCHECK .*CMD \[\"canary-healthcheck\"\]", dockerfile, re.M | re.S)


def test_healthcheck_names_the_worker_node_as_canary_worker_does(tmp_path: Path) -> None:
    # a stand-in `celery` answers a ping as `celery inspect ping` prints it
    def healthy(answering: str, version: str = "v2") -> bool:
        pong = f"->  {answering}: OK\n        pong\n\n1 node online."
        bodies = {"celery": f"printf '%s\\n' '{pong}'", "hostname": "echo gpu-host"}
        for name, body in bodies.items():
            (tmp_path / name).write_text(f"#!/bin/sh\n{body}\n")
            (tmp_path / name).chmod(0o755)
        env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "MODEL_VERSION": version, "DEVICE": "cuda:0"}
        script = str(ROOT / "worker_images" / "healthcheck.sh")
        return subprocess.run([script], env=env, check=False).returncode == 0

    assert healthy("render-v2-cuda0-3fa9c1@gpu-host")  # the default unique name
    assert healthy("render-v2-cuda0@gpu-host")  # an explicit --name
    assert not healthy("render-v2-cuda0-3fa9c1@other-host")
    assert not healthy("render-v20-cuda0-3fa9c1@gpu-host")
    assert not healthy("render-v1-cuda0-3fa9c1@gpu-host")
    assert healthy("nothing@gpu-host", version="")  # not a render worker: nothing to check


def pypi_reachable() -> bool:
    try:
        return httpx.head("https://pypi.org/simple/torch/", timeout=5).status_code < 500
    except httpx.HTTPError:
        return False


@pytest.mark.integration
@pytest.mark.slow
def test_the_lock_resolves_again_for_linux_x86_64_unchanged(tmp_path: Path) -> None:
    """worker_images/lock.sh on the committed lock keeps every pin: the set is consistent
    and resolvable for the image's platform from PyPI (torch's CUDA wheels there)."""
    uv = shutil.which("uv", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if uv is None:
        pytest.skip("uv is missing (pip install -e .[test])")
    if not pypi_reachable():
        if os.environ.get("CI"):
            pytest.fail("PyPI is not reachable and CI is set")
        pytest.skip("PyPI is not reachable")
    output = tmp_path / "requirements.lock"
    shutil.copy(LOCK, output)  # uv keeps the pins of an existing output unless they conflict
    result = subprocess.run(
        [str(ROOT / "worker_images" / "lock.sh"), str(output)],
        env={**os.environ, "UV": uv}, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert pins(output.read_text()) == pins(LOCK.read_text())
