"""Waits every tier shares: poll until something has happened, with a deadline that names
what it waited for, and the probes several tests wait on.

`integration/conftest.py` re-exports `wait_until` (the control plane's tests import it from
there); the runtime's waits on its metrics are in `integration/runtime_server.py`.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(
    what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.5
) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` and the last value.

    An AssertionError from `probe` counts as "not yet" (a kubectl error, a reading that is
    not there yet)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except AssertionError as e:
            last = e
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}"
            )
        time.sleep(interval)


def refuses_connections(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a connect to `port` is refused now: nothing listens there any more.

    A connect that is reset (ConnectionResetError) was caught in the backlog of a listener
    being closed: the kernel completed the handshake, then the close reset it. The port is
    closing, not yet refusing, so that is False and the caller probes again; the next
    connect is refused. A connect that succeeds means something still listens.
    """
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False
    return False
