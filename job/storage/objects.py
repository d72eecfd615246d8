"""Object and folder operations on local paths and s3:// URIs: read, write, list, delete, copy."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any, BinaryIO

from job.storage.client import (
    _NOT_FOUND_CODES,
    S3Settings,
    _add_retry,
    _error_code,
    _local_errors,
    _s3_errors,
    max_attempts,
    s3_client,
)
from job.storage.paths import S3_SCHEME, StorageError, _local, _split, is_s3, join

# Bodies up to this size go in one PUT; larger ones use a multipart upload, which S3 also
# publishes only when it completes.
MULTIPART_THRESHOLD_BYTES = 64 * 1024 * 1024
# Local in-progress files carry this marker so list_files never reports them.
_PARTIAL_MARKER = ".partial-"
_DELETE_BATCH = 1000


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
            f"Cannot write {uri}: it names a bucket, not an object. Add a key, e.g. {uri.rstrip('/')}/file."
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
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}", suffix=f"{_PARTIAL_MARKER}tmp")
    try:
        # A full disk or a lost mount surfaces in write/flush/fsync: one StorageError naming the path.
        with _local_errors(path, "write"), os.fdopen(fd, "wb") as f:
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


def delete_partial_files(uri: str) -> int:
    """Remove in-progress files that a killed local write left under a folder; returns how many.

    Call it only where no other writer can be active (e.g. under a held lease). S3 needs
    nothing like it: an unfinished PUT or multipart upload never becomes an object.
    """
    if is_s3(uri):
        return 0
    removed = 0
    for root, _dirs, files in os.walk(_local(uri)):
        for name in files:
            if _PARTIAL_MARKER in name:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(root, name))
                    removed += 1
    return removed


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
        raise StorageError(f"Refusing to delete {uri}: it names a whole bucket. Delete a prefix inside it.")
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
        raise StorageError(f"Cannot upload {local_dir}: not a folder. Give the path of an existing folder.")
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


def sha256_file(path: str) -> str:
    """sha256 hex digest of a local file, read in 1 MiB blocks (bounded memory)."""

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
