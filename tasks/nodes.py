"""Render worker node names: ``render-<version>-<device>-<suffix>@<host>``.

The node name is a worker's identity: the job row records it as ``worker_host`` and the
claim guard (storage.jobs.claim_job) lets a worker take back a RUNNING job only under it.
Two workers of one version on one host must therefore never share a name, so the default
carries a random suffix; the prefix ``render-<version>-<device>`` is what everything that
looks for a version's workers matches on (healthcheck, `canary up`, tests).
"""

from __future__ import annotations

import secrets

SUFFIX_BYTES = 3  # 6 hex digits: a collision among one host's workers is negligible


def node_prefix(version: str, device: str) -> str:
    """``render-v1-cpu``, ``render-v2-cuda0``: the part every worker of a binding shares."""
    return f"render-{version}-{device.replace(':', '')}"


def unique_node_name(version: str, device: str, host: str) -> str:
    return f"{node_prefix(version, device)}-{secrets.token_hex(SUFFIX_BYTES)}@{host}"


def serves(node: str, prefix: str) -> bool:
    """Whether ``node`` (``name@host``) is named after ``prefix`` (``render-v1-cpu``):
    the default unique name, or exactly the prefix (an explicit ``--name``)."""
    name = node.split("@", 1)[0]
    return name == prefix or name.startswith(f"{prefix}-")
