"""Pytest fixtures for the embedded S3 server (a real HTTP S3 API on 127.0.0.1).

``tests/conftest.py`` imports them (``from tests.s3_fixtures import s3_server, bucket``), so
every test has them; that is the one way in (loading this module a second way, e.g. as a
``-p`` plugin, would register the fixtures twice).
"""

from __future__ import annotations

import uuid

import pytest

from job import storage
from job.storage import embedded


@pytest.fixture(scope="session")
def s3_server():
    """One embedded S3 server for the session, with S3_ENDPOINT_URL and dummy keys set.

    The environment is set in ``os.environ`` so subprocesses (Ray workers) inherit it; it is
    restored when the session ends.
    """
    server = embedded.use_embedded_s3()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket(s3_server) -> str:
    """A fresh, empty bucket name on the embedded server for one test.

    Buckets are not removed afterwards: the server keeps data in memory and ends with the
    session, and a test may have pointed the environment elsewhere by teardown time.
    """
    name = f"test-{uuid.uuid4().hex[:16]}"
    storage.ensure_bucket(f"s3://{name}")
    return name
