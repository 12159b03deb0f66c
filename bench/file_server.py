"""A static file server for the fetch bench: the standard library's, but sending files with
sendfile(2), so the server is not what limits a loopback transfer (http.server's own copy
loop, 64 KiB at a time in Python, tops out near the rate it is measuring).

    python bench/file_server.py PORT DIRECTORY
"""

from __future__ import annotations

import functools
import http.server
import socket
import sys
from typing import IO, Any


class SendfileHandler(http.server.SimpleHTTPRequestHandler):
    def copyfile(self, source: IO[bytes], outputfile: Any) -> None:
        outputfile.flush()  # the headers first
        # socket.sendfile itself falls back to send() where sendfile(2) cannot be used.
        self.connection.sendfile(source)  # type: ignore[arg-type]

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    port, directory = int(sys.argv[1]), sys.argv[2]
    handler = functools.partial(SendfileHandler, directory=directory)
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as httpd:
        httpd.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        httpd.serve_forever()


if __name__ == "__main__":
    main()
