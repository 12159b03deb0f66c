"""One threaded HTTP server on loopback for the tests that serve models or misbehave on
purpose (cut bodies, held bytes): started, yielded as its base URL, always shut down."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def loopback_server(handler: Callable[..., Any]) -> Iterator[str]:
    """Serve `handler` (a BaseHTTPRequestHandler class or partial) on 127.0.0.1 at a free
    port; yields "http://127.0.0.1:PORT"."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
