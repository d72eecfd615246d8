# IRSA: an IAM role that only the job's ServiceAccount can assume, allowed to read
# datasets and to read/write runs in one bucket, and nothing else.

locals {
  issuer = trimprefix(var.oidc_issuer_url, "https://")
}

data "aws_iam_policy_document" "trust" {
  statement {
    sid     = "JobServiceAccountOnly"
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.issuer}:sub"
      values   = ["system:serviceaccount:${var.namespace}:${var.service_account}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "job" {
  # Listing is needed to find shards and the newest checkpoint; only under the two prefixes.
  # A request without a prefix (HeadBucket, a bucket-wide listing) has no s3:prefix key, and
  # StringLike on an absent key is false, so this statement never allows it: the job sends
  # none (tests/integration/test_iam_requests.py records every request of a run).
  statement {
    sid       = "ListDatasetsAndRuns"
    actions   = ["s3:ListBucket"]
    resources = [var.bucket_arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values = [
        var.datasets_prefix,
        "${var.datasets_prefix}/*",
        var.runs_prefix,
        "${var.runs_prefix}/*",
      ]
    }
  }

  statement {
    sid       = "ReadDatasets"
    actions   = ["s3:GetObject"]
    resources = ["${var.bucket_arn}/${var.datasets_prefix}/*"]
  }

  # DeleteObject: checkpoint retention; AbortMultipartUpload: clean up a failed large write.
  statement {
    sid = "ReadWriteRuns"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
    ]
    resources = ["${var.bucket_arn}/${var.runs_prefix}/*"]
  }

  # The bucket is SSE-KMS: reading needs Decrypt, writing needs GenerateDataKey.
  statement {
    sid       = "UseBucketKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
  }
}

resource "aws_iam_role" "job" {
  name               = var.role_name
  assume_role_policy = data.aws_iam_policy_document.trust.json
  tags               = var.tags
}

resource "aws_iam_role_policy" "job" {
  name   = "${var.role_name}-s3"
  role   = aws_iam_role.job.id
  policy = data.aws_iam_policy_document.job.json
}
