"""The model cache's flags of `modelservice fetch`: named once, for the fetch command that
parses them (modelservice_runtime/fetch/command.py) and the operator that renders them into
the model-fetch init container (modelservice_operator/render.py).

Pure standard library: both images carry it.
"""

from __future__ import annotations

# A URI naming a set of files (a model with external data) rather than one file: an
# archive by its suffix, a directory or prefix by its trailing slash.
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")

CACHE_DIR = "--cache-dir"
CACHE_MAX_BYTES = "--cache-max-bytes"

CACHE_DIR_HELP = (
    "a directory shared by fetches (a PVC or a node's path): a model found there by its "
    "key is published from it without downloading; one not found is fetched into it first"
)
CACHE_MAX_BYTES_HELP = (
    "after a fetch, evict the least recently used entries until the cache holds at most N "
    "bytes (the entry just used is kept, even alone over N); default: no bound"
)


def cache_args(cache_dir: str, max_bytes: int | None) -> list[str]:
    """The fetch arguments that use the cache at `cache_dir`, bounded to `max_bytes`."""
    args = [CACHE_DIR, cache_dir]
    if max_bytes is not None:
        args += [CACHE_MAX_BYTES, str(max_bytes)]
    return args


def names_a_set(uri: str) -> bool:
    """Whether `uri` names a model in several files (an archive, or a directory or prefix
    written with a trailing /), which fetch lands as a directory."""
    path = uri.split("?", 1)[0].split("#", 1)[0]
    return path.endswith("/") or path.lower().endswith(ARCHIVE_SUFFIXES)
