"""A small IAM evaluator: would the job's IAM role let these S3 requests through on AWS?

moto (the embedded S3 server) does not enforce IAM, so a policy that denies the job's first
request passes every other test. The request-level check closes that gap in three steps:

1. ``load_policy`` parses a ``data "aws_iam_policy_document"`` block of the Terraform (by
   default ``"job"`` in infra/modules/irsa/main.tf) with python-hcl2 and substitutes the
   ``var.*`` references with test values (``job_policy`` does it for the IRSA module).
2. ``S3Request.from_record`` reads one request that the embedded server recorded
   (``embedded.start(record=...)``) and ``S3Request.checks`` maps it to the authorisations
   AWS makes for it: IAM action, resource ARN and request condition keys (the table below).
3. ``decide`` / ``denied`` apply IAM's identity-policy logic to those checks.

Request -> IAM checks (path-style requests, ``/bucket/key``; b = ``arn:aws:s3:::BUCKET``):

- HeadBucket (HEAD /b): ``s3:ListBucket`` on b with no ``s3:prefix`` key.
- ListObjectsV2 / ListObjects (GET /b): ``s3:ListBucket`` on b; ``s3:prefix`` = the ``prefix``
  parameter, ``s3:delimiter`` = ``delimiter`` (a parameter not sent: no key).
- ListObjectVersions: ``s3:ListBucketVersions`` (same keys); ListMultipartUploads:
  ``s3:ListBucketMultipartUploads``; GetBucketLocation, CreateBucket, DeleteBucket: the
  action of the same name; all on b.
- GetObject: ``s3:GetObject`` + ``kms:Decrypt``; HeadObject: ``s3:GetObject``; on b/key.
- PutObject, CreateMultipartUpload, UploadPart: ``s3:PutObject`` + ``kms:GenerateDataKey``;
  CompleteMultipartUpload: ``s3:PutObject`` + ``kms:Decrypt`` (S3 reads the encrypted parts).
- CopyObject, UploadPartCopy: ``s3:GetObject`` + ``kms:Decrypt`` on the source,
  ``s3:PutObject`` + ``kms:GenerateDataKey`` on b/key.
- ListParts: ``s3:ListMultipartUploadParts``; AbortMultipartUpload: ``s3:AbortMultipartUpload``.
- DeleteObject: ``s3:DeleteObject`` (with ``?versionId``: ``s3:DeleteObjectVersion``);
  DeleteObjects (POST /b?delete): ``s3:DeleteObject`` on b/KEY for every key in its body.

The KMS checks (resource: the bucket's key) are made only when ``kms_key_arn`` is given: the
bucket's default encryption is SSE-KMS (infra/modules/storage). A request the table does not
know raises ``UnmappedRequest``, so a new kind of request fails the check instead of passing it.

Policy logic (identity policies only): a statement applies when the action matches one of its
``actions``, the resource one of its ``resources`` (both with ``*`` and ``?`` wildcards;
actions case-insensitive, resources case-sensitive) and every ``condition`` block holds
(blocks are ANDed, the values of one block ORed). Explicit Deny wins, else any Allow, else
implicit deny. Condition operators: ``StringEquals``, ``StringLike`` (``*``/``?``): false
when the key is absent from the request, so an Allow conditioned on ``s3:prefix`` does not
apply to a request without a prefix; their ``...IfExists`` forms: true when the key is
absent; ``Null``: ``"true"`` holds when the key is absent, ``"false"`` when present. Anything
else (``not_actions``, ``not_resources``, ``principals``, other operators, unresolved
references) raises ``UnsupportedPolicy``. Not modelled: bucket policies, SCPs, permission
boundaries, session policies, KMS key policies.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import hcl2

REPO = Path(__file__).resolve().parents[1]
IRSA_MAIN_TF = REPO / "infra" / "modules" / "irsa" / "main.tf"
# Test values for the IRSA module's variables that are not per-test.
TEST_KMS_KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-0000-0000-000000000000"

ALLOW, EXPLICIT_DENY, IMPLICIT_DENY = "Allow", "ExplicitDeny", "ImplicitDeny"


class UnsupportedPolicy(ValueError):
    """The policy uses something this evaluator does not model."""


class UnmappedRequest(ValueError):
    """A recorded request that the request -> IAM table does not cover."""


# ---------------------------------------------------------------------------- policies


@dataclass(frozen=True)
class Condition:
    test: str  # e.g. StringLike
    key: str  # e.g. s3:prefix
    values: tuple[str, ...]

    def holds(self, context: Mapping[str, str]) -> bool:
        test, if_exists = self.test, self.test.endswith("IfExists")
        if if_exists:
            test = test[: -len("IfExists")]
        if test == "Null":
            # Null "true": the key is absent; "false": it is present.
            return any((v.lower() == "true") == (self.key not in context) for v in self.values)
        if test not in ("StringEquals", "StringLike"):
            raise UnsupportedPolicy(f"condition operator {self.test} is not modelled")
        if self.key not in context:
            return if_exists
        value = context[self.key]
        if test == "StringEquals":
            return value in self.values
        return any(_glob(v).fullmatch(value) for v in self.values)


@dataclass(frozen=True)
class Statement:
    sid: str
    effect: str  # Allow | Deny
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    conditions: tuple[Condition, ...] = ()

    def applies(self, check: Check) -> bool:
        return (
            any(_glob(a, ignore_case=True).fullmatch(check.action) for a in self.actions)
            and any(_glob(r).fullmatch(check.resource) for r in self.resources)
            and all(c.holds(check.context) for c in self.conditions)
        )


@lru_cache(maxsize=256)
def _glob(pattern: str, ignore_case: bool = False) -> re.Pattern:
    """IAM wildcards: * is any run of characters (``/`` included), ? is one character."""
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body, re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def load_policy(variables: Mapping[str, str], path: Path = IRSA_MAIN_TF, document: str = "job") -> list[Statement]:
    """The statements of ``data "aws_iam_policy_document" "<document>"`` in ``path``, with
    every ``${var.NAME}`` replaced by ``variables[NAME]``."""
    with path.open() as f:
        doc = hcl2.load(f)
    bodies = [
        body
        for entry in doc.get("data", [])
        for typ, named in entry.items()
        if _literal(typ) == "aws_iam_policy_document"
        for name, body in named.items()
        if _literal(name) == document
    ]
    if len(bodies) != 1:
        raise UnsupportedPolicy(f"{path}: expected one aws_iam_policy_document {document!r}, found {len(bodies)}")
    return [_statement(st, variables, f"{path.name}: {document}") for st in bodies[0].get("statement", [])]


def job_policy(bucket: str, *, datasets_prefix: str = "datasets", runs_prefix: str = "runs") -> list[Statement]:
    """The IRSA module's job policy for ``bucket`` (prefixes default to the module's defaults)."""
    return load_policy(
        {
            "bucket_arn": f"arn:aws:s3:::{bucket}",
            "datasets_prefix": datasets_prefix,
            "runs_prefix": runs_prefix,
            "kms_key_arn": TEST_KMS_KEY_ARN,
        }
    )


_STATEMENT_KEYS = {"sid", "effect", "actions", "resources", "condition"}
_CONDITION_KEYS = {"test", "variable", "values"}


def _statement(body: dict[str, Any], variables: Mapping[str, str], where: str) -> Statement:
    fields = {k for k in body if not k.startswith("__")}  # python-hcl2 adds __is_block__, __comments__
    if fields - _STATEMENT_KEYS:
        raise UnsupportedPolicy(f"{where}: statement fields {sorted(fields - _STATEMENT_KEYS)} are not modelled")
    sid = _resolve(body.get("sid", '""'), variables)
    conditions = []
    for block in body.get("condition", []):
        keys = {k for k in block if not k.startswith("__")}
        if keys != _CONDITION_KEYS:
            raise UnsupportedPolicy(f"{where}: statement {sid!r} has a condition with fields {sorted(keys)}")
        conditions.append(
            Condition(
                _resolve(block["test"], variables),
                _resolve(block["variable"], variables),
                tuple(_resolve(v, variables) for v in block["values"]),
            )
        )
    effect = _resolve(body.get("effect", '"Allow"'), variables)
    if effect not in ("Allow", "Deny"):
        raise UnsupportedPolicy(f"{where}: statement {sid!r} has effect {effect!r}")
    return Statement(
        sid=sid,
        effect=effect,
        actions=tuple(_resolve(a, variables) for a in body.get("actions", [])),
        resources=tuple(_resolve(r, variables) for r in body.get("resources", [])),
        conditions=tuple(conditions),
    )


def _literal(text: str) -> str:
    """python-hcl2 keeps the quotes of string literals (``'"s3:prefix"'``): drop them."""
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def _resolve(value: Any, variables: Mapping[str, str]) -> str:
    """A string literal or a ``${var.NAME}`` template, with the variables substituted."""
    if not isinstance(value, str):
        raise UnsupportedPolicy(f"{value!r} is not a string")

    def substitute(match: re.Match) -> str:
        if match.group(1) not in variables:
            raise UnsupportedPolicy(f"no test value for var.{match.group(1)} (in {value})")
        return variables[match.group(1)]

    text = re.sub(r"\$\{var\.(\w+)\}", substitute, _literal(value))
    if "${" in text:
        raise UnsupportedPolicy(f"{value} has a reference other than var.NAME")
    return text


# ---------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Check:
    """One authorisation AWS makes for a request: an action on a resource, with condition keys."""

    action: str
    resource: str
    context: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        keys = "".join(f", {k}={v!r}" for k, v in sorted(self.context.items())) or ", no condition keys"
        return f"{self.action} on {self.resource}{keys}"


def decide(statements: Iterable[Statement], check: Check) -> str:
    """ALLOW, EXPLICIT_DENY (a Deny statement applies: it wins) or IMPLICIT_DENY (nothing applies)."""
    applying = [st.effect for st in statements if st.applies(check)]
    if "Deny" in applying:
        return EXPLICIT_DENY
    return ALLOW if applying else IMPLICIT_DENY


def denied(statements: Iterable[Statement], request: S3Request, kms_key_arn: str | None = None) -> list[str]:
    """Why ``request`` would be refused: one line per check that is not allowed; [] if it passes."""
    statements = list(statements)
    return [
        f"{check}: {verdict}"
        for check in request.checks(kms_key_arn)
        if (verdict := decide(statements, check)) != ALLOW
    ]


# ---------------------------------------------------------------------------- requests


_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
# Parameters of a GetObject that name no subresource.
_GET_OBJECT_PARAMS = {"partNumber", "versionId", "x-id"}
# Parameters of a ListObjects(V2).
_LIST_PARAMS = {
    "list-type",
    "prefix",
    "delimiter",
    "max-keys",
    "encoding-type",
    "marker",
    "continuation-token",
    "start-after",
    "fetch-owner",
}


@dataclass(frozen=True)
class S3Request:
    """One recorded S3 request, path-style: ``METHOD /bucket/key?query``."""

    method: str
    bucket: str
    key: str  # "" for a bucket-level request
    query: Mapping[str, str]  # the first value of each parameter; a flag such as ?delete maps to ""
    copy_source: tuple[str, str] | None = None  # (bucket, key) of x-amz-copy-source
    delete_keys: tuple[str, ...] = ()  # DeleteObjects: the keys in the body

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> S3Request:
        """From one record of the embedded server's request log."""
        bucket, _, key = record["path"].lstrip("/").partition("/")
        if not bucket:
            raise UnmappedRequest(f"{record['method']} {record['path']}: no bucket in the path (ListBuckets?)")
        query = {k: v[0] for k, v in parse_qs(record.get("query", ""), keep_blank_values=True).items()}
        copy_source = None
        if record.get("copy_source"):
            source = unquote(record["copy_source"].partition("?")[0]).lstrip("/")
            src_bucket, _, src_key = source.partition("/")
            copy_source = (src_bucket, src_key)
        delete_keys: tuple[str, ...] = ()
        if record.get("body") and "delete" in query:
            root = ET.fromstring(record["body"])
            delete_keys = tuple(k.text or "" for k in root.iter() if k.tag in ("Key", f"{_S3_NS}Key"))
        return cls(record["method"].upper(), bucket, key, query, copy_source, delete_keys)

    def __str__(self) -> str:
        query = "&".join(f"{k}={v}" if v else k for k, v in self.query.items())
        text = f"{self.operation}: {self.method} /{self.bucket}{'/' + self.key if self.key else ''}"
        text += f"?{query}" if query else ""
        if self.copy_source:
            text += f" (copy from {self.copy_source[0]}/{self.copy_source[1]})"
        if self.delete_keys:
            text += f" (keys {', '.join(self.delete_keys)})"
        return text

    @property
    def operation(self) -> str:
        """The S3 API operation: HeadBucket, ListObjectsV2, GetObject, ..."""
        m, q, flags = self.method, self.query, set(self.query)
        if not self.key:
            if m == "HEAD" and not flags:
                return "HeadBucket"
            if m == "GET":
                for flag, name in (
                    ("uploads", "ListMultipartUploads"),
                    ("versions", "ListObjectVersions"),
                    ("location", "GetBucketLocation"),
                ):
                    if flag in flags:
                        return name
                if not flags - _LIST_PARAMS:
                    return "ListObjectsV2" if q.get("list-type") == "2" else "ListObjects"
            if m == "PUT" and not flags:
                return "CreateBucket"
            if m == "POST" and "delete" in flags:
                return "DeleteObjects"
            if m == "DELETE" and not flags:
                return "DeleteBucket"
        else:
            upload = "uploadId" in flags
            if m == "GET" and upload:
                return "ListParts"
            if m in ("GET", "HEAD") and not flags - _GET_OBJECT_PARAMS - {
                k for k in flags if k.startswith("response-")
            }:
                if m == "HEAD":
                    return "HeadObject"
                return "GetObjectVersion" if "versionId" in flags else "GetObject"
            if m == "PUT" and upload and "partNumber" in flags:
                return "UploadPartCopy" if self.copy_source else "UploadPart"
            if m == "PUT" and not flags - {"x-id"}:
                return "CopyObject" if self.copy_source else "PutObject"
            if m == "POST" and "uploads" in flags:
                return "CreateMultipartUpload"
            if m == "POST" and upload:
                return "CompleteMultipartUpload"
            if m == "DELETE" and upload:
                return "AbortMultipartUpload"
            if m == "DELETE" and not flags - {"versionId", "x-id"}:
                return "DeleteObjectVersion" if "versionId" in flags else "DeleteObject"
        raise UnmappedRequest(f"{m} /{self.bucket}/{self.key}?{'&'.join(q)}: not in the request -> IAM table")

    def checks(self, kms_key_arn: str | None = None) -> list[Check]:
        """The authorisations AWS makes for this request (see the module's table)."""
        bucket, obj = f"arn:aws:s3:::{self.bucket}", f"arn:aws:s3:::{self.bucket}/{self.key}"
        op = self.operation

        def kms(action: str) -> list[Check]:
            return [Check(action, kms_key_arn)] if kms_key_arn else []

        if op in ("ListObjectsV2", "ListObjects", "ListObjectVersions", "HeadBucket"):
            context = {f"s3:{k}": self.query[k] for k in ("prefix", "delimiter") if k in self.query}
            action = "s3:ListBucketVersions" if op == "ListObjectVersions" else "s3:ListBucket"
            return [Check(action, bucket, context)]
        simple_bucket = {
            "ListMultipartUploads": "s3:ListBucketMultipartUploads",
            "GetBucketLocation": "s3:GetBucketLocation",
            "CreateBucket": "s3:CreateBucket",
            "DeleteBucket": "s3:DeleteBucket",
        }
        if op in simple_bucket:
            return [Check(simple_bucket[op], bucket)]
        if op == "DeleteObjects":
            return [Check("s3:DeleteObject", f"{bucket}/{key}") for key in self.delete_keys]
        if op in ("GetObject", "GetObjectVersion"):
            return [Check(f"s3:{op}", obj), *kms("kms:Decrypt")]
        if op == "HeadObject":
            return [Check("s3:GetObject", obj)]
        if op in ("PutObject", "CreateMultipartUpload", "UploadPart"):
            return [Check("s3:PutObject", obj), *kms("kms:GenerateDataKey")]
        if op == "CompleteMultipartUpload":
            return [Check("s3:PutObject", obj), *kms("kms:Decrypt")]
        if op in ("CopyObject", "UploadPartCopy"):
            src_bucket, src_key = self.copy_source
            return [
                Check("s3:GetObject", f"arn:aws:s3:::{src_bucket}/{src_key}"),
                *kms("kms:Decrypt"),
                Check("s3:PutObject", obj),
                *kms("kms:GenerateDataKey"),
            ]
        simple_object = {
            "ListParts": "s3:ListMultipartUploadParts",
            "AbortMultipartUpload": "s3:AbortMultipartUpload",
            "DeleteObject": "s3:DeleteObject",
            "DeleteObjectVersion": "s3:DeleteObjectVersion",
        }
        return [Check(simple_object[op], obj)]

    @property
    def names_keys(self) -> bool:
        """True if the request names keys or a key prefix (False: HeadBucket, an unprefixed listing)."""
        return bool(self.key or self.delete_keys or "prefix" in self.query)

    def retarget(self, bucket: str | None = None, move: Callable[[str], str] | None = None) -> S3Request:
        """The same request against ``bucket`` and/or with every key and prefix passed through ``move``."""
        move = move or (lambda k: k)
        new_bucket = bucket or self.bucket
        query = dict(self.query)
        if "prefix" in query:
            query["prefix"] = move(query["prefix"])
        source = self.copy_source and (bucket or self.copy_source[0], move(self.copy_source[1]))
        return replace(
            self,
            bucket=new_bucket,
            key=move(self.key) if self.key else "",
            query=query,
            copy_source=source,
            delete_keys=tuple(move(k) for k in self.delete_keys),
        )
