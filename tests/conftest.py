"""Shared pytest setup: quiet frameworks and the embedded S3 server fixtures.

The harness every test uses (the CLI runner, the clean-error check, and `require`, the one
skip-or-fail policy for missing prerequisites) is tests/cli.py; import it as ``tests.cli``.
"""

from __future__ import annotations

import os

# Set before TensorFlow or Ray is imported by any test module.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_ACCEPT_CALLS_FROM_CHILD_PROCESSES", "1")

from tests.s3_fixtures import bucket, s3_server  # noqa: E402,F401  (fixtures)
