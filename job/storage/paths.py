"""Paths: every path in the product is a local path or ``s3://bucket/prefix``."""

from __future__ import annotations

import os

from job.errors import UserError

S3_SCHEME = "s3://"


class StorageError(UserError):
    """Object storage or a local path failed in a way the user can fix.

    The message is one paragraph: what failed, the URI, where credentials came from (for
    S3), and what to do.
    """


# --------------------------------------------------------------------------- paths


def is_s3(uri: str) -> bool:
    """True for ``s3://`` URIs, False for local paths."""
    return isinstance(uri, str) and uri.startswith(S3_SCHEME)


def _split(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` -> ("bucket", "a/b")."""
    rest = uri[len(S3_SCHEME) :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri!r} is not a valid S3 URI: it names no bucket. Write it as s3://BUCKET/PREFIX.")
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


def is_within(uri: str, folder: str) -> bool:
    """True when `uri` is `folder` or lies inside it.

    Local paths are compared by their real paths (symlinks and `..` resolved); s3:// URIs by
    bucket and key prefix. A local path is never within an s3:// folder, nor the reverse.
    """
    if is_s3(uri) != is_s3(folder):
        return False
    if is_s3(uri):
        return f"{uri.rstrip('/')}/".startswith(f"{folder.rstrip('/')}/")
    inner, outer = os.path.realpath(_local(uri)), os.path.realpath(_local(folder))
    return os.path.commonpath([inner, outer]) == outer
