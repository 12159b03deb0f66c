"""s3:// sources with boto3 (optional): one key, or every object under a prefix ending in `/`.

Credentials and region come from the AWS_* environment (AWS_ENDPOINT_URL for MinIO or
Ceph); without them boto3's own chain (config files, web identity, instance roles) decides.
botocore retries the requests; a body cut short is fetched again here.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from modelservice_runtime.errors import first_line
from modelservice_runtime.fetch.base import (
    FetchError,
    Retryable,
    SetError,
    Transfer,
    copy_stream,
    redact,
    refusals_named,
    with_retries,
)
from modelservice_runtime.fetch.progress import Progress
from modelservice_runtime.fetch.trees import digest_of, safe_relpath


def s3_prefix(uri: str) -> tuple[str, str] | None:
    """(bucket, prefix) when `uri` names an s3 prefix (`s3://bucket/prefix/`, a trailing
    slash; `s3://bucket/` for the whole bucket), None for anything else."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme.lower() != "s3" or not parts.netloc or not parts.path.endswith("/"):
        return None
    return parts.netloc, parts.path.lstrip("/")


def plan_prefix(prefix: str, objects: Iterable[tuple[str, int]]) -> list[tuple[str, str, int]]:
    """(key, relative path under DEST, size) for each object listed under `prefix`.

    The relative path is the key less the prefix, held to the archive members' rules: no
    absolute path, no `..` (S3 keys are free text: `prefix/../x` is a legal key). Zero-size
    keys ending in `/` are the folder markers consoles create and are skipped. Two keys
    that land on the same path (`a/./b` and `a/b`), or a file where another key needs a
    directory (`a` and `a/b`), are refused rather than one silently overwriting the other.
    """
    plan: list[tuple[str, str, int]] = []
    seen: dict[str, str] = {}
    for key, size in objects:
        if not key.startswith(prefix):
            raise SetError(f"s3 key {key!r}: listed outside the prefix {prefix!r}, refused")
        if key.endswith("/") and size == 0:
            continue
        rel = safe_relpath(key[len(prefix) :], f"s3 key {key!r}: path")
        if rel == PurePosixPath("."):
            raise SetError(f"s3 key {key!r}: names the prefix itself, not a file under it")
        name = rel.as_posix()
        if name in seen:
            raise SetError(f"s3 key {key!r}: lands on {name!r} like key {seen[name]!r}, refused")
        seen[name] = key
        plan.append((key, name, size))
    for name, key in seen.items():
        for parent in PurePosixPath(name).parents:
            other = seen.get(parent.as_posix())
            if other is not None:
                raise SetError(
                    f"s3 key {key!r}: needs {parent.as_posix()!r} as a directory, but key "
                    f"{other!r} is a file there, refused"
                )
    if not plan:
        raise SetError(f"s3 prefix {prefix!r}: no objects under it")
    return plan


def _client(uri: str, *, env: Mapping[str, str], retries: int, timeout: float) -> Any:
    """A boto3 S3 client with our retries and timeouts; credentials from the AWS_* env."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise FetchError(
            f"{uri}: s3:// URIs need boto3, which is not installed (pip install boto3), "
            f"or use an https presigned URL"
        ) from None
    config = Config(
        retries={"max_attempts": retries + 1, "mode": "standard"},
        connect_timeout=timeout,
        read_timeout=timeout,
    )
    # Older boto3 ignores AWS_ENDPOINT_URL (MinIO, Ceph); pass it on explicitly. Keys and
    # region from `env` when it has them (it is os.environ but in tests); otherwise boto3's
    # own chain (config files, web identity, instance roles) decides.
    return boto3.client(
        "s3",
        endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
        aws_session_token=env.get("AWS_SESSION_TOKEN") or None,
        region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
        config=config,
    )


@contextmanager
def _s3_errors(where: str, doing: str = "") -> Iterator[None]:
    """botocore's errors as FetchError naming `where` (and what was being done)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "?")
        raise FetchError(f"{where}: S3 error {code}{doing}: {first_line(e)}") from e
    except BotoCoreError as e:
        raise FetchError(f"{where}: S3 request failed{doing}: {first_line(e)}") from e


def fetch_object(uri: str, tmp: Path, transfer: Transfer) -> tuple[str, int]:
    """s3://bucket/key into the file `tmp`; (sha256, bytes)."""
    parts = urllib.parse.urlsplit(uri)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket or not key:
        raise FetchError(
            f"URI: expected s3://bucket/key (or s3://bucket/prefix/ for a set), got {uri!r}"
        )
    client = _client(uri, env=transfer.env, retries=transfer.retries, timeout=transfer.timeout)
    with _s3_errors(uri):
        obj = client.get_object(Bucket=bucket, Key=key)
        body = obj["Body"]
        with (
            body,
            open(tmp, "wb") as out,
            transfer.meter(Path(key).name, obj.get("ContentLength")) as progress,
        ):
            return copy_stream(body.read, out, progress)


def fetch_prefix(uri: str, tree: Path, transfer: Transfer) -> str:
    """Every object under s3://bucket/prefix/ into `tree`; returns the set digest.

    The listing is planned (plan_prefix: every key's path checked) before any byte is
    written, and each object is hashed as it streams, so the set digest costs no second
    read. An object whose body breaks off is fetched again, up to `retries` times
    (botocore retries the requests themselves, not a body cut short).
    """
    show = redact(uri)
    bucket_prefix = s3_prefix(uri)
    assert bucket_prefix is not None
    bucket, prefix = bucket_prefix
    client = _client(uri, env=transfer.env, retries=transfer.retries, timeout=transfer.timeout)
    with _s3_errors(show, " listing the prefix"):
        listed = [
            (obj["Key"], int(obj["Size"]))
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix
            )
            for obj in page.get("Contents", [])
        ]
    with refusals_named(show):
        plan = plan_prefix(prefix, listed)

    hashes: list[tuple[str, str]] = []
    label = PurePosixPath(prefix.rstrip("/")).name or bucket
    total = sum(size for _, _, size in plan)
    with transfer.meter(f"{label} ({len(plan)} objects)", total) as progress:
        for key, rel, size in plan:
            target = tree / rel
            target.parent.mkdir(parents=True, exist_ok=True)

            def once(key: str = key, target: Path = target, size: int = size) -> str:
                start = progress.done
                try:
                    return _get_key(client, bucket, key, target, size, progress, show)
                except Retryable:
                    progress.add(start - progress.done)  # the part is fetched again
                    raise

            digest = with_retries(once, transfer, show=show, what=f"s3 key {key!r}")
            hashes.append((rel, digest))
    return digest_of(hashes)


def _get_key(
    client: Any, bucket: str, key: str, target: Path, size: int, progress: Progress, show: str
) -> str:
    """One object of a prefix into `target`; its sha256. Retryable when the body broke off."""
    from botocore.exceptions import BotoCoreError

    with _s3_errors(show, f" on key {key!r}"):
        try:
            obj = client.get_object(Bucket=bucket, Key=key)
            with obj["Body"] as body, open(target, "wb") as out:
                digest, got = copy_stream(body.read, out, progress)
        except BotoCoreError as e:
            # A body cut short or timed out mid-read (botocore wraps urllib3's).
            raise Retryable(first_line(e)) from e
    if got != size:
        raise Retryable(f"got {got} of {size} bytes")
    return digest
