"""Shared pytest setup: quiet frameworks, the embedded S3 server fixtures, CLI runner."""

from __future__ import annotations

import os

# Set before TensorFlow or Ray is imported by any test module.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_ACCEPT_CALLS_FROM_CHILD_PROCESSES", "1")

from tests.s3_fixtures import bucket, s3_server  # noqa: E402,F401  (fixtures)
