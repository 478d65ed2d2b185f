"""Whether the Hugging Face hub can be reached: the one probe that model loading (``quill.models``) and hub data
sets (``quill.data.hub``) share, so both decide "offline" the same way and a process probes once per host.

Offline when an offline switch is set (``HF_HUB_OFFLINE``, and for data sets ``HF_DATASETS_OFFLINE``) or one TCP
connection to the endpoint (``HF_ENDPOINT``, default huggingface.co) fails within 3 s. The connection runs in a
thread, because a DNS lookup (``getaddrinfo``) has no timeout of its own.
"""
from __future__ import annotations

import concurrent.futures
import os
import socket
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0
_TRUE = ("1", "true", "yes", "on")
_reachable: dict[tuple[str, int], bool] = {}


def env_offline(*extra: str) -> bool:
    """An offline switch is set: ``HF_HUB_OFFLINE`` or one of ``extra`` (e.g. ``HF_DATASETS_OFFLINE``)."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", *extra))


def hub_endpoint() -> tuple[str, int]:
    """(host, port) of the hub endpoint, honouring ``HF_ENDPOINT``."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One TCP connection to the endpoint (no HTTP, no retries), its answer kept for the process."""
    endpoint = hub_endpoint()
    if endpoint not in _reachable:
        def probe() -> bool:
            with socket.create_connection(endpoint, timeout=timeout):
                return True
        pool = concurrent.futures.ThreadPoolExecutor(1)
        try:
            _reachable[endpoint] = pool.submit(probe).result(timeout=timeout)
        except Exception:  # noqa: BLE001 - refused, DNS failure, timeout: all mean "cannot reach it"
            _reachable[endpoint] = False
        finally:
            pool.shutdown(wait=False)
    return _reachable[endpoint]


def hub_offline(*extra: str) -> bool:
    """Hub downloads cannot work: a switch is set or the endpoint does not answer."""
    return env_offline(*extra) or not hub_reachable()
