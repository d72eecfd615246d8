"""Pre-flight access checks, bucket creation, and the pyarrow filesystem for Ray Data and Ray Train."""

from __future__ import annotations

import os
import uuid
from typing import Any

from job.storage.client import (
    _CREDENTIAL_SOURCES,
    _NOT_FOUND_CODES,
    CONNECT_TIMEOUT_SECONDS,
    READ_TIMEOUT_SECONDS,
    S3Settings,
    _error_code,
    _has_credentials,
    _no_credentials_error,
    _probe_client,
    _resolved,
    _s3_errors,
    max_attempts,
    s3_client,
)
from job.storage.paths import StorageError, _local, _split, is_s3

# --------------------------------------------------------------------------- pyarrow


def arrow_filesystem(uri: str):
    """(pyarrow filesystem, path inside it) for Ray Data reads and Ray Train storage.

    S3: ``(S3FileSystem(...), "bucket/prefix")`` with the same endpoint, region,
    credentials and attempt count as the boto3 client. Local: ``(LocalFileSystem(),
    absolute path)``. pyarrow's retries are not counted by ``retry_count()``.
    """
    import pyarrow.fs as pafs

    if not is_s3(uri):
        return pafs.LocalFileSystem(), os.path.abspath(_local(uri))
    bucket, key = _split(uri)
    settings, session = _resolved()
    options: dict[str, Any] = dict(
        region=settings.region,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        request_timeout=READ_TIMEOUT_SECONDS,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts()),
    )
    if settings.endpoint_url:
        scheme, _, host = settings.endpoint_url.partition("://")
        options.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    if settings.credentials_source == _CREDENTIAL_SOURCES["env"]:
        # Explicit keys travel with the (pickled) filesystem to Ray workers; other sources
        # (IRSA, instance profile) are resolved by the AWS SDK on each node.
        frozen = session.get_credentials().get_frozen_credentials()
        options.update(
            access_key=frozen.access_key,
            secret_key=frozen.secret_key,
            session_token=frozen.token or None,
        )
    try:
        fs = pafs.S3FileSystem(**options)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for bad options
        raise StorageError(
            f"Cannot open {uri} with pyarrow: {exc}. Endpoint: {settings.describe_endpoint()}; "
            f"credentials: {settings.credentials_source}. Check S3_ENDPOINT_URL and AWS_REGION."
        ) from exc
    return fs, f"{bucket}/{key}" if key else bucket


# --------------------------------------------------------------------------- preflight


def check_access(uri: str, write: bool = False) -> None:
    """Fail fast, before expensive work, if ``uri`` cannot be read (or written).

    S3: credentials exist (checked before any request), the endpoint answers (about 10 s
    at most), the bucket exists, listing is allowed; for reads something exists at the URI
    (an object or files below it), and for ``write=True`` a small probe object can be
    written and deleted under the prefix. Local: the path exists (read) or
    its nearest existing parent is a writable folder (write).
    """
    if not is_s3(uri):
        _check_local(_local(uri), write)
        return
    bucket, key = _split(uri)
    settings = S3Settings.from_env()
    if not _has_credentials(settings):
        raise _no_credentials_error(uri, "access", settings)
    client = _probe_client()
    with _s3_errors(uri, "access"):
        # A listing under the URI's own prefix, not HeadBucket: it tells a missing bucket
        # (NoSuchBucket) and a refusal apart just as well, and IAM authorises HeadBucket as
        # a bucket-wide s3:ListBucket, which a policy scoped to the data and run prefixes
        # rightly refuses (tests/integration/test_iam_requests.py).
        listing = client.list_objects_v2(Bucket=bucket, MaxKeys=1, **({"Prefix": f"{key}/"} if key else {}))
        if not write and key and listing.get("KeyCount", 0) == 0:
            _require_object(client, bucket, key, uri)
    if write:
        name = f".write-probe-{uuid.uuid4().hex}"
        probe = f"{key}/{name}" if key else name
        with _s3_errors(uri, "write to"):
            client.put_object(Bucket=bucket, Key=probe, Body=b"")
            client.delete_object(Bucket=bucket, Key=probe)


def _require_object(client, bucket: str, key: str, uri: str) -> None:
    """Raise 'not found' unless ``key`` is an object (the prefix below it is empty)."""
    try:
        client.head_object(Bucket=bucket, Key=key)
    except Exception as exc:  # noqa: BLE001 - a 404 becomes our own message
        if _error_code(exc) not in _NOT_FOUND_CODES:
            raise
        raise StorageError(
            f"Cannot read {uri}: not found: nothing exists at {uri} (neither an object nor "
            f"files below it). Check the URI, or run the step that writes it first."
        ) from exc


def _check_local(path: str, write: bool) -> None:
    if not write:
        if not os.path.exists(path):
            raise StorageError(
                f"Cannot read {path}: not found: {path}. Check the path (relative paths are "
                f"relative to {os.getcwd()}), or run the step that creates it first."
            )
        if not os.access(path, os.R_OK):
            raise StorageError(f"Cannot read {path}: permission denied. Check its permissions.")
        return
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) and probe != os.path.abspath(path):
        raise StorageError(
            f"Cannot write {path}: {probe} is a file, so the folder cannot be created. Choose another path."
        )
    folder = probe if os.path.isdir(probe) else os.path.dirname(probe)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StorageError(
            f"Cannot write {path}: folder {folder} is not writable. Choose a folder you can "
            f"write, or fix its permissions."
        )


def ensure_bucket(uri: str) -> None:
    """Create the bucket of ``uri`` if missing (embedded server, demo, MinIO dev only)."""
    if not is_s3(uri):
        return
    bucket, _ = _split(uri)
    client = s3_client()
    settings = S3Settings.from_env()
    with _s3_errors(uri, "create the bucket for"):
        try:
            client.head_bucket(Bucket=bucket)
            return
        except Exception as exc:  # noqa: BLE001 - only "missing" leads to creation
            if _error_code(exc) not in _NOT_FOUND_CODES | {"NoSuchBucket"}:
                raise
        params: dict[str, Any] = {"Bucket": bucket}
        if settings.region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": settings.region}
        try:
            client.create_bucket(**params)
        except Exception as exc:  # noqa: BLE001 - losing a creation race is fine
            if _error_code(exc) not in {"BucketAlreadyOwnedByYou"}:
                raise
