"""Run a quill app with uvicorn in a background thread on loopback (tests, notebooks, benchmarks).

Why a socket bound before uvicorn starts: asking the OS for a free port (port 0) and handing uvicorn the
already-bound socket has no window in which another process can take the port.
"""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import uvicorn


@contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", timeout: float = 30.0) -> Iterator[str]:
    """Yields the base URL (``http://127.0.0.1:PORT``) while the app serves; stops it on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
