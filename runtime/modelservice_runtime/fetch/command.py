"""`modelservice fetch URI DEST`: the command line over fetch_model and the cache.

This is what the `model-fetch` init container runs before the runtime starts, so a failure
here is loud and final: a one-line error and a non-zero exit, never a half-written or
unverified /models/model.onnx that the runtime would then report ready on. The package's
docstring (fetch/__init__.py) says what a fetch does.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from modelservice_cli import fetch_flags

from modelservice_runtime.fetch import cache
from modelservice_runtime.fetch.api import fetch_model
from modelservice_runtime.fetch.base import (
    DEFAULT_BACKOFF_S,
    DEFAULT_FILENAME,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    FetchError,
    redact,
)
from modelservice_runtime.fetch.http import PASSWORD_ENV, TOKEN_ENV, USERNAME_ENV
from modelservice_runtime.fetch.progress import DEFAULT_INTERVAL_S as DEFAULT_PROGRESS_INTERVAL_S


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "uri",
        metavar="URI",
        help="https://, http://, file://, s3:// (needs boto3) or a local path; a directory, "
        "s3://bucket/prefix/ or .tar/.tar.gz/.tgz/.zip archive for a multi-file model",
    )
    parser.add_argument(
        "dest",
        metavar="DEST",
        help=f"target file, or a directory to write {DEFAULT_FILENAME} into; for a "
        "directory, archive or s3 prefix URI, the directory the set lands in",
    )
    parser.add_argument(
        "--sha256",
        metavar="HEX",
        help="expected sha256 of the model file or archive; for a directory or prefix, "
        "its set digest (modelservice digest PATH)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        metavar="N",
        help="extra attempts after connection errors, timeouts and 5xx (not 4xx)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help="seconds to wait on connect or on any read before the attempt fails",
    )
    parser.add_argument(
        "--backoff",
        type=float,
        default=DEFAULT_BACKOFF_S,
        metavar="S",
        help="first retry delay; doubles on each retry (capped at 30s)",
    )
    parser.add_argument(
        "--max-unpacked-bytes",
        type=int,
        default=None,
        metavar="N",
        help="refuse an archive that unpacks past N bytes (default 4x the archive's size)",
    )
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=DEFAULT_PROGRESS_INTERVAL_S,
        metavar="S",
        help="seconds between progress lines on stderr (bytes, total, rate, ETA); 0: none "
        f"(default {DEFAULT_PROGRESS_INTERVAL_S:g})",
    )
    parser.add_argument(
        fetch_flags.CACHE_DIR, dest="cache_dir", metavar="DIR", help=fetch_flags.CACHE_DIR_HELP
    )
    parser.add_argument(
        fetch_flags.CACHE_MAX_BYTES,
        dest="cache_max_bytes",
        type=int,
        metavar="N",
        help=fetch_flags.CACHE_MAX_BYTES_HELP,
    )
    parser.add_argument(
        "--no-onnx-check",
        dest="check_onnx",
        action="store_false",
        help="skip checking that the file is a loadable ONNX model",
    )
    parser.epilog = (
        f"credentials (http/https): {TOKEN_ENV} (bearer) or {USERNAME_ENV} and "
        f"{PASSWORD_ENV} (basic); s3: the AWS_* environment variables"
    )


def run(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {
        "retries": args.retries,
        "timeout": args.timeout,
        "backoff": args.backoff,
        "check_onnx": args.check_onnx,
        "max_unpacked_bytes": args.max_unpacked_bytes,
        "progress_interval": args.progress_interval,
    }
    try:
        if getattr(args, "cache_dir", None):
            result = cache.fetch_cached(
                args.uri,
                args.dest,
                args.sha256,
                cache_dir=args.cache_dir,
                max_bytes=args.cache_max_bytes,
                **options,
            )
        elif getattr(args, "cache_max_bytes", None) is not None:
            raise FetchError(f"{fetch_flags.CACHE_MAX_BYTES}: needs {fetch_flags.CACHE_DIR}")
        else:
            result = fetch_model(args.uri, args.dest, args.sha256, **options)
    except FetchError as e:
        print(f"modelservice fetch: error: {e}", file=sys.stderr)
        return 1
    verb = "fetched" if result.copied else "verified in place"
    print(
        f"{verb} {redact(args.uri)} -> {result.path} ({result.size} bytes, sha256 {result.sha256})"
    )
    return 0
