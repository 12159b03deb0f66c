"""The one place the runtime touches uvicorn below its public API.

transport/http_protocol.py is an asyncio protocol that uvicorn's server runs in place of its
own h11/httptools protocols, so it takes what uvicorn hands its protocols: the Config, the
ServerState shared by every connection, and the helpers that read a transport's addresses.
None of these is documented API. tests/unit/test_third_party_internals.py fails loudly when
an upgrade changes them; TESTED names the minors checked, and pyproject's `uvicorn` range
allows only those.
"""

from __future__ import annotations

from uvicorn.config import Config
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl
from uvicorn.server import ServerState

TESTED = ("0.54",)

__all__ = ["TESTED", "Config", "ServerState", "get_local_addr", "get_remote_addr", "is_ssl"]
