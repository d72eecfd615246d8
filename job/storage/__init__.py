"""The storage wing: the only code that talks to object storage (boto3, pyarrow.fs, moto).

This package is a facade; import it as ``from job import storage`` and call
``storage.read_bytes(uri)`` and friends. Inside it: ``paths`` (URI arithmetic),
``client`` (settings, boto3 clients, retries, error messages), ``objects`` (reads, writes,
listings, folders), ``access`` (pre-flight checks, pyarrow filesystem), ``embedded`` (the
embedded S3 server) and ``run_store`` (the layout of a run folder). May import: job.errors,
job.config.

Every path in the product is a local path or ``s3://bucket/prefix``. Object operations go
through boto3 (one place for retries, timeouts, error messages and retry counting);
``arrow_filesystem`` hands Ray Data and Ray Train a ``pyarrow.fs`` filesystem built from the
same settings. Local paths use plain Python.

Settings (endpoint, credentials, region, attempts) come only from the environment or the IAM
role chain, never from config files; `client.py` lists them.
"""

from job.storage.access import arrow_filesystem, check_access, ensure_bucket
from job.storage.client import (
    S3Settings,
    max_attempts,
    reset_clients,
    retry_count,
    s3_client,
)
from job.storage.objects import (
    copy_file,
    delete,
    delete_partial_files,
    download_dir,
    exists,
    list_files,
    open_read,
    open_write,
    read_bytes,
    read_json,
    read_text,
    sha256_file,
    size,
    upload_dir,
    write_bytes,
    write_json,
    write_text,
)
from job.storage.paths import StorageError, basename, is_s3, is_within, join, parent

__all__ = [
    "StorageError",
    "S3Settings",
    "is_s3",
    "is_within",
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
    "delete_partial_files",
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
