"""Getting a model onto local disk, atomically, and proving it is one (`modelservice fetch`).

- Sources: https/http (stdlib urllib, no extra dependency: http.py), file:// and plain
  paths, which is how a pvc:// model arrives (local.py), and s3:// when boto3 is installed
  (one key, or every object under a prefix ending in `/`: s3.py).
- A file lands through a temp file beside DEST (single.py); a directory, an archive or an
  s3 prefix lands as a directory built beside DEST (sets.py, archives.py, trees.py); both
  are renamed into place (atomic.py) only once hashed (sha256 while streaming), checked
  against --sha256 and, unless --no-onnx-check, loaded as a model (verify.py).
- Progress: a line every --progress-interval seconds (progress.py has the format).
- Credentials come from the environment only (the operator wires a Secret in with
  envFrom): MODELSERVICE_FETCH_TOKEN (bearer) or MODELSERVICE_FETCH_USERNAME/PASSWORD
  (basic) for http(s); the usual AWS_* variables for s3. They are never printed, and the
  Authorization header is dropped when a redirect leaves the original host.
- Connection errors, timeouts, truncated bodies, 5xx, 408 and 429 are retried with
  exponential backoff (base.with_retries); 4xx such as 401/403/404 fail at once.
- --cache-dir: a model fetched once per node, not once per pod (cache.py).
- command.py is the command line; api.fetch_model the entry for code.

Imports run one way: command -> cache -> api -> sets -> single -> sources (http, s3,
local) -> trees, archives, verify, atomic -> base -> progress.
"""

from modelservice_runtime.fetch.api import fetch, fetch_model
from modelservice_runtime.fetch.base import FetchError, FetchResult, redact

__all__ = ["FetchError", "FetchResult", "fetch", "fetch_model", "redact"]
