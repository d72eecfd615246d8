"""S3 settings, boto3 clients, retry counting and error messages.

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
import errno
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from job.storage.paths import S3_SCHEME, StorageError, is_s3

DEFAULT_REGION = "us-east-1"
DEFAULT_MAX_ATTEMPTS = 8
CONNECT_TIMEOUT_SECONDS = 5
READ_TIMEOUT_SECONDS = 60
# check_access must answer within ~10 s even when the endpoint black-holes packets.
CHECK_CONNECT_TIMEOUT_SECONDS = 3
CHECK_READ_TIMEOUT_SECONDS = 5
CHECK_MAX_ATTEMPTS = 2

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
    def from_env(cls) -> S3Settings:
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
            _check_endpoint(name, value)
            return value.rstrip("/")
    return None


def _check_endpoint(name: str, value: str) -> None:
    """botocore refuses an endpoint without a scheme with a bare ValueError, and pyarrow would
    guess one: say what is wrong before either sees it."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest.split("/", 1)[0]:
        raise StorageError(
            f"{name}={value!r} is not an endpoint URL: it needs http:// or https:// and a host, "
            f"e.g. http://{rest or value}. Fix {name}, or unset it to use AWS S3."
        )


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
    return _cached("client", lambda: _build_client(attempts, CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS))


def _probe_client():
    """A client that gives up fast: check_access must answer in about 10 s."""
    return _cached(
        "probe",
        lambda: _build_client(CHECK_MAX_ATTEMPTS, CHECK_CONNECT_TIMEOUT_SECONDS, CHECK_READ_TIMEOUT_SECONDS),
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
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "Free space on that disk (or raise the quota), or choose another location."
        what = exc.strerror or "no space left"
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
