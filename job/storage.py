"""The one module that talks to object storage.

Every path in the product is a local path or ``s3://bucket/prefix``. Object operations go
through boto3 (one place for retries, timeouts, error messages and retry counting);
``arrow_filesystem`` hands Ray Data and Ray Train a ``pyarrow.fs`` filesystem built from the
same settings. Local paths use plain Python.

Settings come only from the environment or the IAM role chain, never from the product's
config files:

- ``S3_ENDPOINT_URL`` (falling back to ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``) for
  MinIO, moto and other S3-compatible servers; unset means AWS S3.
- ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, or the AWS
  credential chain: IRSA web identity on EKS, container credentials, the instance profile.
  (The chain also honours ``~/.aws`` profiles, like every AWS tool.)
- ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` (default ``us-east-1``).
- ``S3_MAX_ATTEMPTS``: attempts per request, retries included (default 8).

Clients are cached per process and per settings; a change to any of the variables above
is picked up on the next call, and ``reset_clients()`` drops the caches explicitly.

``retry_count()`` counts boto3's retries only. pyarrow's S3 client (used by Ray Data and
Ray Train through ``arrow_filesystem``) retries inside the AWS C++ SDK, which exposes no
counter, so those retries cannot be counted.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

from job.errors import UserError

__all__ = [
    "StorageError",
    "S3Settings",
    "is_s3",
    "join",
    "parent",
    "basename",
    "exists",
    "size",
    "read_bytes",
    "write_bytes",
    "read_json",
    "write_json",
    "read_text",
    "write_text",
    "open_read",
    "open_write",
    "list_files",
    "delete",
    "upload_dir",
    "download_dir",
    "copy_file",
    "sha256_file",
    "arrow_filesystem",
    "s3_client",
    "check_access",
    "ensure_bucket",
    "retry_count",
    "reset_clients",
    "max_attempts",
]

S3_SCHEME = "s3://"
DEFAULT_REGION = "us-east-1"
DEFAULT_MAX_ATTEMPTS = 8
CONNECT_TIMEOUT_SECONDS = 5
READ_TIMEOUT_SECONDS = 60
# check_access must answer within ~10 s even when the endpoint black-holes packets.
CHECK_CONNECT_TIMEOUT_SECONDS = 3
CHECK_READ_TIMEOUT_SECONDS = 5
CHECK_MAX_ATTEMPTS = 2
# Bodies up to this size go in one PUT; larger ones use a multipart upload, which S3 also
# publishes only when it completes.
MULTIPART_THRESHOLD_BYTES = 64 * 1024 * 1024
# Local in-progress files carry this marker so list_files never reports them.
_PARTIAL_MARKER = ".partial-"
_DELETE_BATCH = 1000

# Environment variables that change which client we build; the caches key on them.
_SETTINGS_ENV = (
    "S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "S3_MAX_ATTEMPTS",
)

_NO_CREDENTIALS = "none found"
# botocore's name for where credentials came from -> the words we show users.
_CREDENTIAL_SOURCES = {
    "env": "environment (AWS_ACCESS_KEY_ID)",
    "assume-role-with-web-identity": "web identity (IRSA)",
    "container-role": "container credentials (EKS Pod Identity / ECS)",
    "iam-role": "instance profile (EC2 metadata)",
    "shared-credentials-file": "shared credentials file (~/.aws/credentials)",
    "config-file": "AWS config file (~/.aws/config)",
    "assume-role": "assumed role from an AWS profile",
    "sso": "AWS SSO profile",
    "custom-process": "credential_process from an AWS profile",
}

_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
_DENIED_CODES = {
    "403",
    "AccessDenied",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
}
_THROTTLE_CODES = {"SlowDown", "503", "Throttling", "ThrottlingException", "RequestLimitExceeded"}


class StorageError(UserError):
    """Object storage or a local path failed in a way the user can fix.

    The message is one paragraph: what failed, the URI, where credentials came from (for
    S3), and what to do.
    """


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class S3Settings:
    """Where S3 requests go and with which credentials, read from the environment."""

    endpoint_url: str | None
    """Custom endpoint (MinIO, moto, ...); None means AWS S3."""
    region: str
    """Region used to sign requests."""
    credentials_source: str
    """Where credentials come from, in words, e.g. 'environment (AWS_ACCESS_KEY_ID)'."""

    @classmethod
    def from_env(cls) -> "S3Settings":
        """Resolve settings from the environment and the AWS credential chain.

        Only a credential *lookup* happens here (files, env, and on EC2 the instance
        metadata service); no request goes to the S3 endpoint.
        """
        return _resolved()[0]

    @property
    def is_custom_endpoint(self) -> bool:
        """True for MinIO/moto/other S3-compatible servers, False for AWS S3."""
        if not self.endpoint_url:
            return False
        host = _endpoint_host(self.endpoint_url)
        return not (host.endswith(".amazonaws.com") or host.endswith(".amazonaws.com.cn"))

    def describe_endpoint(self) -> str:
        """The endpoint in words for error messages."""
        return self.endpoint_url or f"AWS S3 (region {self.region})"


def _endpoint_host(endpoint_url: str) -> str:
    rest = endpoint_url.split("://", 1)[-1]
    return rest.split("/", 1)[0].rsplit(":", 1)[0].lower()


def _env_endpoint() -> str | None:
    # boto3 reads AWS_ENDPOINT_URL* by itself but pyarrow does not, so resolve it here once
    # and pass it explicitly to both.
    for name in ("S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        value = os.environ.get(name, "").strip()
        if value:
            return value.rstrip("/")
    return None


def _env_region() -> str:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return DEFAULT_REGION


def max_attempts() -> int:
    """Attempts per S3 request (retries included), from ``S3_MAX_ATTEMPTS`` (default 8)."""
    raw = os.environ.get("S3_MAX_ATTEMPTS", "").strip()
    if not raw:
        return DEFAULT_MAX_ATTEMPTS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise StorageError(
            f"S3_MAX_ATTEMPTS={raw!r} is not a positive integer. Set it to the number of "
            f"attempts per S3 request (default {DEFAULT_MAX_ATTEMPTS}) or unset it."
        )
    return value


_lock = threading.RLock()
_cache: dict[tuple, Any] = {}


def _env_key() -> tuple:
    # The pid is part of the key: boto3 sessions and clients must not cross a fork.
    return (os.getpid(),) + tuple(os.environ.get(name) for name in _SETTINGS_ENV)


def _cached(kind: str, build):
    key = (kind,) + _env_key()
    with _lock:
        if key not in _cache:
            _cache[key] = build()
        return _cache[key]


def reset_clients() -> None:
    """Forget cached settings, sessions and clients (call after changing the environment)."""
    with _lock:
        _cache.clear()


def _resolved():
    """(S3Settings, boto3 Session), cached per environment."""
    return _cached("settings", _resolve_settings)


def _resolve_settings():
    import boto3
    import botocore.exceptions

    region = _env_region()
    session = boto3.session.Session(region_name=region)
    try:
        credentials = session.get_credentials()
    except botocore.exceptions.PartialCredentialsError as exc:
        source = f"incomplete credentials ({exc})"
    except botocore.exceptions.BotoCoreError as exc:
        source = f"credential lookup failed ({exc})"
    else:
        if credentials is None:
            source = _NO_CREDENTIALS
        else:
            method = getattr(credentials, "method", "") or ""
            source = _CREDENTIAL_SOURCES.get(method, method or "unknown")
    settings = S3Settings(endpoint_url=_env_endpoint(), region=region, credentials_source=source)
    return settings, session


def _has_credentials(settings: S3Settings) -> bool:
    source = settings.credentials_source
    return not (source == _NO_CREDENTIALS or source.startswith(("incomplete", "credential lookup")))


# --------------------------------------------------------------------------- clients


def _client_config(attempts: int, connect_timeout: float, read_timeout: float, custom: bool):
    from botocore.config import Config

    options: dict[str, Any] = dict(
        # botocore's "max_attempts" counts retries only (N+1 requests); "total_max_attempts"
        # counts every request, like pyarrow's AwsStandardS3RetryStrategy(max_attempts).
        retries={"mode": "standard", "total_max_attempts": attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=16,
    )
    if custom:
        # boto3 1.36+ sends CRC checksums by default, which several S3-compatible servers
        # reject; path-style because custom endpoints rarely have wildcard DNS.
        options.update(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
        )
    return Config(**options)


def _build_client(attempts: int, connect_timeout: float, read_timeout: float):
    settings, session = _resolved()
    client = session.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        config=_client_config(attempts, connect_timeout, read_timeout, settings.is_custom_endpoint),
    )
    client.meta.events.register("request-created.s3", _count_retry)
    return client


def s3_client():
    """The cached boto3 S3 client built from ``S3Settings.from_env()``.

    Standard retry mode with ``S3_MAX_ATTEMPTS`` attempts, 5 s connect and 60 s read
    timeouts; for custom endpoints path-style addressing and checksums only when required.
    """
    attempts = max_attempts()
    return _cached(
        "client", lambda: _build_client(attempts, CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS)
    )


def _probe_client():
    """A client that gives up fast: check_access must answer in about 10 s."""
    return _cached(
        "probe",
        lambda: _build_client(
            CHECK_MAX_ATTEMPTS, CHECK_CONNECT_TIMEOUT_SECONDS, CHECK_READ_TIMEOUT_SECONDS
        ),
    )


_retries = 0
_retries_lock = threading.Lock()


def _count_retry(request=None, **_kwargs) -> None:
    # botocore creates a new request for every attempt and records the attempt number in
    # the request context; attempt 2+ is a retry.
    context = getattr(request, "context", None) or {}
    if context.get("retries", {}).get("attempt", 1) > 1:
        _add_retry()


def _add_retry() -> None:
    global _retries
    with _retries_lock:
        _retries += 1


def retry_count() -> int:
    """S3 request retries made by boto3 in this process so far (pyarrow's are not counted)."""
    with _retries_lock:
        return _retries


# --------------------------------------------------------------------------- paths


def is_s3(uri: str) -> bool:
    """True for ``s3://`` URIs, False for local paths."""
    return isinstance(uri, str) and uri.startswith(S3_SCHEME)


def _split(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` -> ("bucket", "a/b")."""
    rest = uri[len(S3_SCHEME) :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(
            f"{uri!r} is not a valid S3 URI: it names no bucket. Write it as s3://BUCKET/PREFIX."
        )
    return bucket, key.strip("/")


def _local(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


def join(uri: str, *parts: str) -> str:
    """Append path parts: ``join("s3://b/p", "a")`` -> ``"s3://b/p/a"``; local via os.path."""
    if not is_s3(uri):
        return os.path.join(uri, *parts)
    pieces = [uri.rstrip("/")] + [p.strip("/") for p in parts if p and p.strip("/")]
    return "/".join(pieces)


def parent(uri: str) -> str:
    """The containing folder/prefix; a bucket root is its own parent."""
    if not is_s3(uri):
        stripped = uri.rstrip(os.sep) or os.sep
        return os.path.dirname(stripped) or "."
    bucket, key = _split(uri)
    if "/" not in key:
        return f"{S3_SCHEME}{bucket}"
    return f"{S3_SCHEME}{bucket}/{key.rsplit('/', 1)[0]}"


def basename(uri: str) -> str:
    """The last path component (the bucket name for a bucket root)."""
    if not is_s3(uri):
        return os.path.basename(uri.rstrip(os.sep))
    bucket, key = _split(uri)
    return key.rsplit("/", 1)[-1] if key else bucket


# --------------------------------------------------------------------------- errors


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", "") or "")
    if not code:
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(status or "")
    return code


def _translate(exc: Exception, uri: str, action: str) -> StorageError:
    """Turn a botocore/boto3/s3transfer exception into one actionable StorageError."""
    import botocore.exceptions as bex

    if isinstance(exc, StorageError):
        return exc
    settings = S3Settings.from_env()
    where = f"Endpoint: {settings.describe_endpoint()}; credentials: {settings.credentials_source}."
    bucket = uri[len(S3_SCHEME) :].split("/", 1)[0] if is_s3(uri) else ""

    if isinstance(exc, (bex.NoCredentialsError, bex.PartialCredentialsError)):
        return _no_credentials_error(uri, action, settings)
    if isinstance(exc, (bex.EndpointConnectionError, bex.ConnectTimeoutError)):
        return StorageError(
            f"Cannot {action} {uri}: the S3 endpoint {settings.describe_endpoint()} cannot be "
            f"reached ({exc}). {where} Check S3_ENDPOINT_URL, that the server is running, and "
            f"that the network (proxy, firewall, NetworkPolicy) allows the connection."
        )
    stalled = (
        bex.ReadTimeoutError,
        bex.ConnectionClosedError,
        bex.ResponseStreamingError,
        bex.IncompleteReadError,
    )
    if isinstance(exc, stalled):
        return StorageError(
            f"Cannot {action} {uri}: the S3 endpoint {settings.describe_endpoint()} stopped "
            f"answering ({exc}). {where} The server may be overloaded; retry later or raise "
            f"S3_MAX_ATTEMPTS."
        )
    code = _error_code(exc)
    if code == "NoSuchBucket":
        return _missing_bucket_error(uri, action, bucket, settings)
    if code in _NOT_FOUND_CODES:
        return StorageError(
            f"Cannot {action} {uri}: not found: {uri}. {where} Check the URI (bucket, prefix "
            f"and file name) and that the step that writes it has run."
        )
    if code in _DENIED_CODES:
        return _denied_error(uri, action, code, settings)
    if code in _THROTTLE_CODES:
        return StorageError(
            f"Cannot {action} {uri}: S3 kept throttling or was unavailable ({code}) after "
            f"{max_attempts()} attempts. {where} Lower the request rate (fewer workers or "
            f"larger shards), retry later, or raise S3_MAX_ATTEMPTS."
        )
    detail = str(exc).rstrip(". ")
    return StorageError(f"Cannot {action} {uri}: {type(exc).__name__}: {detail}. {where}")


def _no_credentials_error(uri: str, action: str, settings: S3Settings) -> StorageError:
    return StorageError(
        f"Cannot {action} {uri}: no S3 credentials found (credentials: "
        f"{settings.credentials_source}; endpoint: {settings.describe_endpoint()}). Set "
        f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run with an IAM role (IRSA service "
        f"account on EKS, or an instance profile)."
    )


def _missing_bucket_error(uri: str, action: str, bucket: str, settings: S3Settings) -> StorageError:
    endpoint = f" --endpoint-url {settings.endpoint_url}" if settings.endpoint_url else ""
    return StorageError(
        f"Cannot {action} {uri}: bucket '{bucket}' does not exist at "
        f"{settings.describe_endpoint()} (credentials: {settings.credentials_source}). Create "
        f"it first, e.g. `aws s3 mb s3://{bucket}{endpoint}` (or with Terraform / the MinIO "
        f"console), or fix the bucket name in the URI."
    )


def _denied_error(uri: str, action: str, code: str, settings: S3Settings) -> StorageError:
    return StorageError(
        f"Cannot {action} {uri}: access denied ({code}) at {settings.describe_endpoint()} "
        f"using credentials from {settings.credentials_source}. Check that the access key and "
        f"secret are right and not expired, and that the role or user may "
        f"s3:GetObject/PutObject/ListBucket/DeleteObject on this bucket and prefix (S3 answers "
        f"403 instead of 404 for a missing object when s3:ListBucket is not allowed)."
    )


def _local_error(exc: OSError, path: str, action: str) -> StorageError:
    if isinstance(exc, FileNotFoundError):
        hint = "Check the path, or create it / run the step that writes it first."
        what = f"not found: {path}"
    elif isinstance(exc, PermissionError):
        hint = "Check the file permissions, or choose a folder you can write."
        what = f"permission denied: {path}"
    elif isinstance(exc, IsADirectoryError):
        hint = "Give the path of a file, not of a folder."
        what = f"is a folder: {path}"
    elif isinstance(exc, NotADirectoryError):
        hint = "A part of the path is a file; choose another path."
        what = f"not a folder: {path}"
    else:
        hint = "Check the path and free disk space."
        what = f"{exc.strerror or exc}: {path}"
    return StorageError(f"Cannot {action} {path}: {what}. {hint}")


@contextlib.contextmanager
def _s3_errors(uri: str, action: str) -> Iterator[None]:
    import boto3.exceptions
    import botocore.exceptions

    try:
        yield
    except StorageError:
        raise
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _translate(exc, uri, action) from exc
    except boto3.exceptions.Boto3Error as exc:
        raise _translate(exc, uri, action) from exc


@contextlib.contextmanager
def _local_errors(path: str, action: str) -> Iterator[None]:
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        raise _local_error(exc, path, action) from exc


# --------------------------------------------------------------------------- objects


def exists(uri: str) -> bool:
    """True if ``uri`` is a file/object or a non-empty folder/prefix.

    A missing bucket is an error (StorageError), not False: it is a setup problem.
    """
    if not is_s3(uri):
        return os.path.exists(_local(uri))
    bucket, key = _split(uri)
    client = s3_client()
    with _s3_errors(uri, "check"):
        if key:
            try:
                client.head_object(Bucket=bucket, Key=key)
                return True
            except Exception as exc:  # noqa: BLE001 - only a 404 means "look for a prefix"
                if _error_code(exc) not in _NOT_FOUND_CODES:
                    raise
        prefix = f"{key}/" if key else ""
        page = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
        return page.get("KeyCount", 0) > 0


def size(uri: str) -> int:
    """Size of a file/object in bytes."""
    if not is_s3(uri):
        path = _local(uri)
        with _local_errors(path, "get the size of"):
            return os.path.getsize(path)
    bucket, key = _split(uri)
    with _s3_errors(uri, "get the size of"):
        return int(s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"])


def read_bytes(uri: str) -> bytes:
    """The whole content of a file/object."""
    if not is_s3(uri):
        path = _local(uri)
        with _local_errors(path, "read"), open(path, "rb") as f:
            return f.read()
    bucket, key = _split(uri)
    with _s3_errors(uri, "read"):
        return _get_whole_object(bucket, key)


def _get_whole_object(bucket: str, key: str) -> bytes:
    """GET an object, retrying when the body stream breaks off.

    botocore retries failed requests, but not a body that stops mid-way (read timeout,
    reset connection, short read) after the headers arrived; for a whole-object read we can
    simply ask again.
    """
    import botocore.exceptions as bex

    broken = (bex.ReadTimeoutError, bex.ResponseStreamingError, bex.IncompleteReadError)
    client = s3_client()
    attempts = max_attempts()
    for attempt in range(1, attempts + 1):
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            return body.read()
        except broken:
            if attempt == attempts:
                raise
            _add_retry()
        finally:
            body.close()
    raise AssertionError("unreachable")


def write_bytes(uri: str, data: bytes) -> None:
    """Write a file/object atomically: readers see the old content or all of the new."""
    if not is_s3(uri):
        with open_write(uri) as f:
            f.write(data)
        return
    bucket, key = _split(uri)
    _require_key(uri, key)
    with _s3_errors(uri, "write"):
        # A single PUT is atomic on S3: the object appears only when the request completes.
        s3_client().put_object(Bucket=bucket, Key=key, Body=bytes(data))


def read_text(uri: str) -> str:
    """A UTF-8 text file/object."""
    data = read_bytes(uri)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StorageError(f"Cannot read {uri} as text: it is not UTF-8 ({exc}).") from exc


def write_text(uri: str, text: str) -> None:
    """Write UTF-8 text atomically."""
    write_bytes(uri, text.encode("utf-8"))


def read_json(uri: str) -> Any:
    """Parse a JSON file/object."""
    text = read_text(uri)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StorageError(
            f"Cannot read {uri}: it is not valid JSON ({exc}). The file may be damaged or was "
            f"not written by this tool; rewrite it."
        ) from exc


def write_json(uri: str, obj: Any) -> None:
    """Write JSON (indent 2, keys in insertion order, trailing newline) atomically."""
    write_text(uri, json.dumps(obj, indent=2) + "\n")


def _require_key(uri: str, key: str) -> None:
    if not key:
        raise StorageError(
            f"Cannot write {uri}: it names a bucket, not an object. Add a key, e.g. "
            f"{uri.rstrip('/')}/file."
        )


class _S3Reader(io.RawIOBase):
    """A readable raw stream over a GetObject body that raises StorageError on failures."""

    def __init__(self, body, uri: str):
        super().__init__()
        self._body = body
        self._uri = uri

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        with _s3_errors(self._uri, "read"):
            data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def open_read(uri: str) -> BinaryIO:
    """A streaming, buffered binary reader; use it as a context manager."""
    if not is_s3(uri):
        path = _local(uri)
        with _local_errors(path, "open"):
            return open(path, "rb")
    bucket, key = _split(uri)
    with _s3_errors(uri, "open"):
        body = s3_client().get_object(Bucket=bucket, Key=key)["Body"]
    reader = io.BufferedReader(_S3Reader(body, uri), buffer_size=1024 * 1024)
    return reader  # type: ignore[return-value]


@contextlib.contextmanager
def open_write(uri: str) -> Iterator[BinaryIO]:
    """A binary writer whose data is published only if the ``with`` block succeeds.

    Local: a hidden temporary file in the same folder, then ``os.replace``. S3: data is
    spooled locally and uploaded when the block ends (one PUT, or a multipart upload that
    S3 publishes only on completion). On an exception nothing is published.
    """
    if is_s3(uri):
        with _open_write_s3(uri) as f:
            yield f
    else:
        with _open_write_local(_local(uri)) as f:
            yield f


@contextlib.contextmanager
def _open_write_local(path: str) -> Iterator[BinaryIO]:
    folder = os.path.dirname(os.path.abspath(path))
    with _local_errors(path, "write"):
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=folder, prefix=f".{os.path.basename(path)}", suffix=f"{_PARTIAL_MARKER}tmp"
        )
    try:
        with os.fdopen(fd, "wb") as f:
            yield f  # type: ignore[misc]
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes 0600 files; give the result the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        with _local_errors(path, "write"):
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _open_write_s3(uri: str) -> Iterator[BinaryIO]:
    bucket, key = _split(uri)
    _require_key(uri, key)
    with tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024) as spool:
        yield spool  # type: ignore[misc]
        length = spool.tell()
        spool.seek(0)
        with _s3_errors(uri, "write"):
            if length <= MULTIPART_THRESHOLD_BYTES:
                s3_client().put_object(Bucket=bucket, Key=key, Body=spool.read())
            else:
                _upload_large(spool, bucket, key)


def _upload_large(fileobj, bucket: str, key: str) -> None:
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD_BYTES,
        multipart_chunksize=MULTIPART_THRESHOLD_BYTES,
        max_concurrency=4,
    )
    s3_client().upload_fileobj(fileobj, bucket, key, Config=config)


# --------------------------------------------------------------------------- folders


def list_files(uri: str, suffix: str = "") -> list[str]:
    """All files under a folder/prefix (recursive) as full URIs, sorted; [] if none."""
    if not is_s3(uri):
        return _list_local(_local(uri), suffix)
    bucket, key = _split(uri)
    prefix = f"{key}/" if key else ""
    found = []
    with _s3_errors(uri, "list"):
        paginator = s3_client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                name = item["Key"]
                # Keys ending in "/" are folder markers some tools create, not files.
                if not name.endswith("/") and name.endswith(suffix):
                    found.append(f"{S3_SCHEME}{bucket}/{name}")
    return sorted(found)


def _list_local(path: str, suffix: str) -> list[str]:
    found = []
    for root, _dirs, files in os.walk(path):
        for name in files:
            if _PARTIAL_MARKER in name or not name.endswith(suffix):
                continue
            found.append(os.path.join(root, name))
    return sorted(found)


def delete(uri: str) -> None:
    """Delete a file/object or a whole folder/prefix; a missing one is not an error."""
    if not is_s3(uri):
        path = _local(uri)
        with _local_errors(path, "delete"):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.unlink(path)
        return
    bucket, key = _split(uri)
    if not key:
        raise StorageError(
            f"Refusing to delete {uri}: it names a whole bucket. Delete a prefix inside it."
        )
    keys = [key] + [u[len(f"{S3_SCHEME}{bucket}/") :] for u in list_files(uri)]
    client = s3_client()
    with _s3_errors(uri, "delete"):
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = [{"Key": k} for k in keys[start : start + _DELETE_BATCH]]
            result = client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            errors = result.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(
                    f"Cannot delete {uri}: {len(errors)} object(s) were not deleted, e.g. "
                    f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}. Check "
                    f"that the credentials ({S3Settings.from_env().credentials_source}) may "
                    f"s3:DeleteObject here."
                )


def upload_dir(local_dir: str, uri: str) -> None:
    """Copy every file under ``local_dir`` to ``uri`` (keeps relative paths)."""
    local_dir = _local(local_dir)
    if not os.path.isdir(local_dir):
        raise StorageError(
            f"Cannot upload {local_dir}: not a folder. Give the path of an existing folder."
        )
    for path in _list_local(local_dir, ""):
        relative = os.path.relpath(path, local_dir).replace(os.sep, "/")
        if is_s3(uri):
            target = join(uri, *relative.split("/"))
        else:
            target = os.path.join(_local(uri), relative)
        copy_file(path, target)


def download_dir(uri: str, local_dir: str) -> None:
    """Copy every file under ``uri`` into ``local_dir`` (keeps relative paths)."""
    local_dir = _local(local_dir)
    if is_s3(uri):
        bucket, key = _split(uri)
        strip = len(f"{S3_SCHEME}{bucket}/{key}/") if key else len(f"{S3_SCHEME}{bucket}/")
        sources = list_files(uri)
        relatives = [s[strip:] for s in sources]
    else:
        base = _local(uri)
        if not os.path.isdir(base):
            raise StorageError(f"Cannot download {base}: not found: {base}. Check the path.")
        sources = _list_local(base, "")
        relatives = [os.path.relpath(s, base) for s in sources]
    for source, relative in zip(sources, relatives):
        copy_file(source, os.path.join(local_dir, *relative.split("/")))


def copy_file(source: str, target: str) -> None:
    """Copy one file between any two URIs (local or s3://), streaming and atomically."""
    with open_read(source) as src, open_write(target) as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)


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
        try:
            client.head_bucket(Bucket=bucket)
        except Exception as exc:  # noqa: BLE001 - HEAD has no body, so map 404 ourselves
            if _error_code(exc) in _NOT_FOUND_CODES | {"NoSuchBucket"}:
                raise _missing_bucket_error(uri, "access", bucket, settings) from exc
            raise
        listing = client.list_objects_v2(Bucket=bucket, Prefix=f"{key}/" if key else "", MaxKeys=1)
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
            f"Cannot write {path}: {probe} is a file, so the folder cannot be created. Choose "
            f"another path."
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


def sha256_file(path: str) -> str:
    """sha256 hex digest of a local file, read in 1 MiB blocks (bounded memory)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
