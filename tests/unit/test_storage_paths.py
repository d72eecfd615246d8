"""storage.py without a network: URI arithmetic, settings from the environment, clients."""

from __future__ import annotations

import os
import socket

import pytest

from job import storage
from job.storage import S3Settings, StorageError
from job.storage import client as storage_client


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No S3 settings at all, no ~/.aws files, no instance metadata lookups."""
    for name in storage_client._SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield monkeypatch


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise AssertionError(f"unexpected network connection to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("s3://b/p", True),
        ("s3://b", True),
        ("/data/x", False),
        ("data/x", False),
        ("S3x://b", False),
    ],
)
def test_is_s3(uri, expected):
    assert storage.is_s3(uri) is expected


@pytest.mark.parametrize(
    "uri, parts, expected",
    [
        ("s3://b/p", ("a",), "s3://b/p/a"),
        ("s3://b/p/", ("a", "b.json"), "s3://b/p/a/b.json"),
        ("s3://b", ("runs", "r1"), "s3://b/runs/r1"),
        ("s3://b/p", ("/a/", ""), "s3://b/p/a"),
        ("s3://b/p", (), "s3://b/p"),
        ("/data/run", ("ckpt", "x.bin"), os.path.join("/data/run", "ckpt", "x.bin")),
        ("rel", ("a",), os.path.join("rel", "a")),
    ],
)
def test_join(uri, parts, expected):
    assert storage.join(uri, *parts) == expected


@pytest.mark.parametrize(
    "uri, expected_parent, expected_base",
    [
        ("s3://b/runs/r1", "s3://b/runs", "r1"),
        ("s3://b/runs/r1/", "s3://b/runs", "r1"),
        ("s3://b/runs", "s3://b", "runs"),
        ("s3://b", "s3://b", "b"),
        ("/data/runs/r1", "/data/runs", "r1"),
        ("/data/runs/r1/", "/data/runs", "r1"),
        ("r1", ".", "r1"),
    ],
)
def test_parent_and_basename(uri, expected_parent, expected_base):
    assert storage.parent(uri) == expected_parent
    assert storage.basename(uri) == expected_base


def test_uri_without_bucket_is_rejected():
    with pytest.raises(StorageError, match="names no bucket"):
        storage.parent("s3:///prefix")


# --------------------------------------------------------------------------- settings


def test_settings_from_environment_keys(clean_env, no_network):
    clean_env.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    clean_env.setenv("S3_ENDPOINT_URL", "http://minio:9000/")
    clean_env.setenv("AWS_DEFAULT_REGION", "eu-west-1")

    settings = S3Settings.from_env()
    assert settings == S3Settings(
        endpoint_url="http://minio:9000",
        region="eu-west-1",
        credentials_source="environment (AWS_ACCESS_KEY_ID)",
    )
    assert settings.is_custom_endpoint
    assert no_network == []


def test_region_precedence_and_default(clean_env):
    assert S3Settings.from_env().region == "us-east-1"
    clean_env.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    clean_env.setenv("AWS_REGION", "ap-south-1")
    assert S3Settings.from_env().region == "ap-south-1"


def test_endpoint_fallbacks(clean_env):
    assert S3Settings.from_env().endpoint_url is None
    clean_env.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    assert S3Settings.from_env().endpoint_url == "http://generic:1"
    clean_env.setenv("S3_ENDPOINT_URL", "http://minio:9000")
    assert S3Settings.from_env().endpoint_url == "http://minio:9000"


def test_aws_endpoints_are_not_custom():
    aws = S3Settings("https://s3.eu-west-1.amazonaws.com", "eu-west-1", "x")
    assert not aws.is_custom_endpoint
    assert not S3Settings(None, "us-east-1", "x").is_custom_endpoint


def test_web_identity_is_reported_as_irsa(clean_env, no_network, tmp_path):
    token = tmp_path / "token"
    token.write_text("eyJ-not-a-real-token")
    clean_env.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/trainer")
    clean_env.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))

    # The role is assumed lazily, on the first request, so no STS call happens here.
    assert S3Settings.from_env().credentials_source == "web identity (IRSA)"
    assert no_network == []


def test_no_credentials_fails_before_any_network_call(clean_env, no_network):
    clean_env.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:9")
    assert S3Settings.from_env().credentials_source == "none found"

    with pytest.raises(StorageError) as info:
        storage.check_access("s3://bucket/data")
    message = str(info.value)
    assert "no S3 credentials found" in message
    assert "AWS_ACCESS_KEY_ID" in message and "IRSA" in message
    assert no_network == []


def test_half_set_credentials_are_reported(clean_env, no_network):
    clean_env.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    assert S3Settings.from_env().credentials_source.startswith("incomplete")
    with pytest.raises(StorageError, match="no S3 credentials"):
        storage.check_access("s3://bucket/data")
    assert no_network == []


def test_bad_max_attempts_is_a_user_error(clean_env):
    clean_env.setenv("S3_MAX_ATTEMPTS", "zero")
    with pytest.raises(StorageError, match="S3_MAX_ATTEMPTS"):
        storage.max_attempts()


# --------------------------------------------------------------------------- clients


def _keys(clean_env):
    clean_env.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", "secret")


def test_custom_endpoint_client_config(clean_env, no_network):
    _keys(clean_env)
    clean_env.setenv("S3_ENDPOINT_URL", "http://minio:9000")
    clean_env.setenv("S3_MAX_ATTEMPTS", "5")
    client = storage.s3_client()
    config = client.meta.config
    assert client.meta.endpoint_url == "http://minio:9000"
    assert config.retries == {"mode": "standard", "total_max_attempts": 5}
    assert (config.connect_timeout, config.read_timeout) == (5, 60)
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    assert config.s3 == {"addressing_style": "path"}
    assert storage.s3_client() is client  # cached
    assert no_network == []


def test_client_follows_environment_changes(clean_env):
    _keys(clean_env)
    clean_env.setenv("S3_ENDPOINT_URL", "http://one:9000")
    first = storage.s3_client()
    clean_env.setenv("S3_ENDPOINT_URL", "http://two:9000")
    second = storage.s3_client()
    assert second is not first
    assert second.meta.endpoint_url == "http://two:9000"
    storage.reset_clients()
    assert storage.s3_client() is not second


def test_aws_client_keeps_default_checksums(clean_env):
    _keys(clean_env)
    clean_env.setenv("AWS_REGION", "eu-central-1")
    config = storage.s3_client().meta.config
    # AWS S3 supports the new checksums; only custom endpoints turn them down.
    assert config.request_checksum_calculation == "when_supported"
    assert config.response_checksum_validation == "when_supported"
    assert not (config.s3 or {}).get("addressing_style")
    assert storage.s3_client().meta.region_name == "eu-central-1"


def test_arrow_filesystem_uses_the_same_settings(clean_env, no_network):
    import pyarrow.fs as pafs

    _keys(clean_env)
    clean_env.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    clean_env.setenv("AWS_REGION", "eu-west-1")
    fs, path = storage.arrow_filesystem("s3://bucket/datasets/flowers/")
    assert isinstance(fs, pafs.S3FileSystem)
    assert path == "bucket/datasets/flowers"
    assert fs.region == "eu-west-1"
    # The endpoint travels with the pickled filesystem to Ray workers.
    assert "127.0.0.1:9000" in repr(fs.__reduce__())
    assert storage.arrow_filesystem("s3://bucket")[1] == "bucket"
    assert no_network == []


def test_is_within_resolves_local_paths_and_compares_s3_prefixes(tmp_path):
    from job.storage import is_within

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    assert is_within(str(tmp_path / "a" / "b"), str(tmp_path / "a"))
    assert is_within(str(tmp_path / "a"), str(tmp_path / "a" / "b" / ".."))
    assert is_within(str(tmp_path / "link" / "b"), str(tmp_path / "a"))
    assert not is_within(str(tmp_path / "ab"), str(tmp_path / "a"))  # a name prefix is not a folder
    assert is_within("s3://bkt/runs/x/", "s3://bkt/runs")
    assert not is_within("s3://bkt/runs-old/x", "s3://bkt/runs")
    assert not is_within("s3://bkt/runs", str(tmp_path))
