"""The IAM evaluator of the request-level check (tests/iam_policy.py): policy logic, the
request -> IAM table, and the HCL loading, on small hand-written cases."""

from __future__ import annotations

import textwrap

import pytest

from tests.iam_policy import (
    ALLOW,
    EXPLICIT_DENY,
    IMPLICIT_DENY,
    TEST_KMS_KEY_ARN,
    Check,
    Condition,
    S3Request,
    Statement,
    UnmappedRequest,
    UnsupportedPolicy,
    decide,
    denied,
    job_policy,
    load_policy,
)

B = "arn:aws:s3:::bucket"


def _request(method: str, path: str, query: str = "", **extra) -> S3Request:
    return S3Request.from_record({"method": method, "path": path, "query": query, **extra})


# ---------------------------------------------------------------------------- policy logic


def test_an_allow_statement_allows_its_actions_on_its_resources_and_nothing_else():
    policy = [Statement("Read", "Allow", ("s3:GetObject",), (f"{B}/data/*",))]
    assert decide(policy, Check("s3:GetObject", f"{B}/data/x")) == ALLOW
    assert decide(policy, Check("s3:PutObject", f"{B}/data/x")) == IMPLICIT_DENY
    assert decide(policy, Check("s3:GetObject", f"{B}/other/x")) == IMPLICIT_DENY
    assert decide([], Check("s3:GetObject", f"{B}/data/x")) == IMPLICIT_DENY


def test_an_explicit_deny_wins_over_any_allow():
    policy = [
        Statement("All", "Allow", ("s3:*",), ("*",)),
        Statement("NoDeletes", "Deny", ("s3:DeleteObject",), (f"{B}/runs/*",)),
    ]
    assert decide(policy, Check("s3:DeleteObject", f"{B}/runs/r/x")) == EXPLICIT_DENY
    assert decide(list(reversed(policy)), Check("s3:DeleteObject", f"{B}/runs/r/x")) == EXPLICIT_DENY
    assert decide(policy, Check("s3:DeleteObject", f"{B}/datasets/x")) == ALLOW
    assert decide(policy, Check("s3:GetObject", f"{B}/runs/r/x")) == ALLOW


def test_wildcards_in_actions_and_resources():
    policy = [Statement("S", "Allow", ("s3:Get*", "kms:?ecrypt"), (f"{B}/run?/*", "arn:aws:kms:*"))]
    assert decide(policy, Check("s3:GetObject", f"{B}/run1/a/b/c")) == ALLOW  # * spans "/"
    assert decide(policy, Check("S3:GETOBJECT", f"{B}/run1/a")) == ALLOW  # actions ignore case
    assert decide(policy, Check("s3:GetObject", f"{B}/RUN1/a")) == IMPLICIT_DENY  # resources do not
    assert decide(policy, Check("s3:GetObject", f"{B}/run12/a")) == IMPLICIT_DENY  # ? is one character
    assert decide(policy, Check("s3:PutObject", f"{B}/run1/a")) == IMPLICIT_DENY
    assert decide(policy, Check("kms:Decrypt", "arn:aws:kms:us-east-1:1:key/k")) == ALLOW
    # Regex characters in a pattern are literal.
    assert decide([Statement("S", "Allow", ("s3:GetObject",), (f"{B}/a.b",))], Check("s3:GetObject", f"{B}/axb")) == (
        IMPLICIT_DENY
    )


def test_string_like_on_s3_prefix():
    listing = Condition("StringLike", "s3:prefix", ("runs", "runs/*"))
    assert listing.holds({"s3:prefix": "runs/r/"})
    assert listing.holds({"s3:prefix": "runs"})
    assert listing.holds({"s3:prefix": "runs/"})
    assert not listing.holds({"s3:prefix": "runs-other/"})  # a look-alike prefix
    assert not listing.holds({"s3:prefix": "datasets/"})
    assert not listing.holds({"s3:prefix": ""})
    exact = Condition("StringEquals", "s3:prefix", ("runs/*",))
    assert exact.holds({"s3:prefix": "runs/*"}) and not exact.holds({"s3:prefix": "runs/r/"})  # no wildcards


def test_an_absent_condition_key_fails_string_conditions_and_passes_if_exists_and_null():
    for test in ("StringLike", "StringEquals"):
        assert not Condition(test, "s3:prefix", ("*",)).holds({}), test
        assert Condition(f"{test}IfExists", "s3:prefix", ("runs/*",)).holds({}), test
        assert not Condition(f"{test}IfExists", "s3:prefix", ("runs/*",)).holds({"s3:prefix": "x/"}), test
    assert Condition("Null", "s3:prefix", ("true",)).holds({})
    assert not Condition("Null", "s3:prefix", ("true",)).holds({"s3:prefix": ""})  # empty is present
    assert Condition("Null", "s3:prefix", ("false",)).holds({"s3:prefix": "runs/"})
    # So a prefix-conditioned Allow does not apply to a request that carries no prefix.
    policy = [
        Statement("List", "Allow", ("s3:ListBucket",), (B,), (Condition("StringLike", "s3:prefix", ("runs/*",)),))
    ]
    assert decide(policy, Check("s3:ListBucket", B, {"s3:prefix": "runs/r/"})) == ALLOW
    assert decide(policy, Check("s3:ListBucket", B)) == IMPLICIT_DENY


def test_all_condition_blocks_must_hold_and_any_value_of_one_block():
    both = Statement(
        "S",
        "Allow",
        ("s3:ListBucket",),
        (B,),
        (Condition("StringLike", "s3:prefix", ("a/*", "b/*")), Condition("StringEquals", "s3:delimiter", ("/",))),
    )
    assert decide([both], Check("s3:ListBucket", B, {"s3:prefix": "b/x", "s3:delimiter": "/"})) == ALLOW
    assert decide([both], Check("s3:ListBucket", B, {"s3:prefix": "b/x"})) == IMPLICIT_DENY


def test_an_operator_the_evaluator_does_not_model_raises():
    with pytest.raises(UnsupportedPolicy, match="NumericLessThan"):
        Condition("NumericLessThan", "s3:max-keys", ("10",)).holds({"s3:max-keys": "1"})


# ---------------------------------------------------------------------------- requests -> IAM


def test_bucket_level_requests_map_to_list_bucket_with_the_prefix_as_condition_key():
    head = _request("HEAD", "/bucket")
    assert head.operation == "HeadBucket"
    assert head.checks() == [Check("s3:ListBucket", B, {})]
    listing = _request("GET", "/bucket", "list-type=2&prefix=runs%2Fr%2F&max-keys=1&encoding-type=url")
    assert listing.operation == "ListObjectsV2"
    assert listing.checks() == [Check("s3:ListBucket", B, {"s3:prefix": "runs/r/"})]
    assert _request("GET", "/bucket", "list-type=2").checks() == [Check("s3:ListBucket", B, {})]  # no prefix: no key
    assert _request("GET", "/bucket", "prefix=&delimiter=%2F").checks() == [
        Check("s3:ListBucket", B, {"s3:prefix": "", "s3:delimiter": "/"})
    ]
    assert _request("GET", "/bucket", "uploads").checks() == [Check("s3:ListBucketMultipartUploads", B)]
    assert _request("PUT", "/bucket").checks() == [Check("s3:CreateBucket", B)]


def test_object_requests_map_to_their_actions_and_kms_use():
    k = f"{B}/runs/r/x"
    assert _request("GET", "/bucket/runs/r/x").checks(TEST_KMS_KEY_ARN) == [
        Check("s3:GetObject", k),
        Check("kms:Decrypt", TEST_KMS_KEY_ARN),
    ]
    assert _request("HEAD", "/bucket/runs/r/x").checks(TEST_KMS_KEY_ARN) == [Check("s3:GetObject", k)]
    assert _request("PUT", "/bucket/runs/r/x").checks() == [Check("s3:PutObject", k)]
    assert _request("DELETE", "/bucket/runs/r/x").checks() == [Check("s3:DeleteObject", k)]
    multipart = {
        ("POST", "uploads"): ("CreateMultipartUpload", "s3:PutObject"),
        ("PUT", "partNumber=1&uploadId=u"): ("UploadPart", "s3:PutObject"),
        ("POST", "uploadId=u"): ("CompleteMultipartUpload", "s3:PutObject"),
        ("DELETE", "uploadId=u"): ("AbortMultipartUpload", "s3:AbortMultipartUpload"),
        ("GET", "uploadId=u"): ("ListParts", "s3:ListMultipartUploadParts"),
    }
    for (method, query), (operation, action) in multipart.items():
        request = _request(method, "/bucket/runs/r/x", query)
        assert request.operation == operation and request.checks()[0] == Check(action, k), (method, query)


def test_copy_reads_the_source_and_writes_the_destination():
    copy = _request("PUT", "/bucket/runs/r/y", copy_source="/bucket/runs/r/x%20z?versionId=1")
    assert copy.operation == "CopyObject"
    assert copy.checks() == [Check("s3:GetObject", f"{B}/runs/r/x z"), Check("s3:PutObject", f"{B}/runs/r/y")]


def test_delete_objects_needs_delete_object_on_every_key_in_its_body():
    body = (
        '<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Object><Key>runs/a</Key></Object>'
        "<Object><Key>runs/b c</Key></Object><Quiet>true</Quiet></Delete>"
    )
    request = _request("POST", "/bucket", "delete", body=body)
    assert request.operation == "DeleteObjects"
    assert request.checks() == [Check("s3:DeleteObject", f"{B}/runs/a"), Check("s3:DeleteObject", f"{B}/runs/b c")]


def test_a_request_the_table_does_not_know_raises():
    with pytest.raises(UnmappedRequest, match="acl"):
        _request("PUT", "/bucket/runs/x", "acl").checks()
    with pytest.raises(UnmappedRequest, match="no bucket"):
        _request("GET", "/")


def test_retarget_moves_bucket_keys_prefixes_copy_sources_and_deleted_keys():
    body = "<Delete><Object><Key>runs/a</Key></Object></Delete>"
    moved = _request("POST", "/bucket", "delete", body=body).retarget(bucket="other", move=lambda k: "x/" + k)
    assert moved.checks() == [Check("s3:DeleteObject", "arn:aws:s3:::other/x/runs/a")]
    listing = _request("GET", "/bucket", "list-type=2&prefix=runs%2F").retarget(move=lambda k: "x/" + k)
    assert listing.checks() == [Check("s3:ListBucket", B, {"s3:prefix": "x/runs/"})]
    copy = _request("PUT", "/bucket/runs/b", copy_source="bucket/runs/a").retarget(bucket="other")
    assert copy.copy_source == ("other", "runs/a") and copy.bucket == "other"
    assert _request("HEAD", "/bucket").retarget(move=lambda k: "x/" + k).checks() == [Check("s3:ListBucket", B, {})]


# ---------------------------------------------------------------------------- the HCL


def test_the_job_policy_loads_from_the_terraform_with_the_variables_substituted():
    policy = job_policy("bucket")
    assert {st.sid for st in policy} >= {"ListDatasetsAndRuns", "ReadDatasets", "ReadWriteRuns"}
    for st in policy:
        assert st.effect in ("Allow", "Deny")
        for text in (*st.actions, *st.resources, *(v for c in st.conditions for v in c.values)):
            assert "${" not in text and '"' not in text, (st.sid, text)
    (read,) = [st for st in policy if st.sid == "ReadDatasets"]
    assert read.resources == (f"{B}/datasets/*",)


def test_the_job_policy_lists_only_under_its_prefixes_and_keeps_writes_out_of_datasets():
    """Finding 3 of issue 14: HeadBucket is s3:ListBucket with no s3:prefix, so the prefix-scoped
    policy refuses it; the job's pre-flight lists under its prefix instead."""
    policy = job_policy("bucket")
    assert denied(policy, _request("HEAD", "/bucket"), TEST_KMS_KEY_ARN)
    assert denied(policy, _request("GET", "/bucket", "list-type=2"), TEST_KMS_KEY_ARN)
    assert denied(policy, _request("GET", "/bucket", "list-type=2&prefix=runs%2Fr%2F"), TEST_KMS_KEY_ARN) == []
    assert denied(policy, _request("GET", "/bucket", "list-type=2&prefix=secret%2F"), TEST_KMS_KEY_ARN)
    assert denied(policy, _request("GET", "/bucket/runs/r/x"), TEST_KMS_KEY_ARN) == []
    assert denied(policy, _request("PUT", "/bucket/datasets/d/x"), TEST_KMS_KEY_ARN)
    assert denied(policy, _request("HEAD", "/another-bucket"), TEST_KMS_KEY_ARN)


def _tf(tmp_path, statements: str):
    path = tmp_path / "main.tf"
    path.write_text(f'data "aws_iam_policy_document" "job" {{\n{textwrap.indent(statements, "  ")}}}\n')
    return path


def test_load_policy_reads_effect_conditions_and_fails_loudly_on_what_it_does_not_model(tmp_path):
    path = _tf(
        tmp_path,
        textwrap.dedent(
            """\
            statement {
              sid       = "NoOtherBuckets"
              effect    = "Deny"
              actions   = ["s3:*"]
              resources = ["${var.bucket_arn}/${var.prefix}/*"]
              condition {
                test     = "StringLike"
                variable = "s3:prefix"
                values   = [var.prefix, "${var.prefix}/*"]
              }
            }
            """
        ),
    )
    (st,) = load_policy({"bucket_arn": B, "prefix": "p"}, path)
    assert st == Statement(
        "NoOtherBuckets", "Deny", ("s3:*",), (f"{B}/p/*",), (Condition("StringLike", "s3:prefix", ("p", "p/*")),)
    )
    with pytest.raises(UnsupportedPolicy, match="var.prefix"):
        load_policy({"bucket_arn": B}, path)
    with pytest.raises(UnsupportedPolicy, match="not_actions"):
        load_policy({}, _tf(tmp_path, 'statement {\n  not_actions = ["s3:*"]\n  resources = ["*"]\n}\n'))
    with pytest.raises(UnsupportedPolicy, match="local"):
        load_policy({}, _tf(tmp_path, 'statement {\n  actions = ["s3:*"]\n  resources = [local.arn]\n}\n'))
    with pytest.raises(UnsupportedPolicy, match="found 0"):
        load_policy({}, path, document="other")
