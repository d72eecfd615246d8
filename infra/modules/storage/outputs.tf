output "bucket_name" {
  description = "Name of the bucket (use it in the aws overlay's s3:// URIs)."
  value       = aws_s3_bucket.this.id
}

output "bucket_arn" {
  description = "ARN of the bucket."
  value       = aws_s3_bucket.this.arn
}

output "kms_key_arn" {
  description = "ARN of the KMS key that encrypts the bucket's objects."
  value       = aws_kms_key.bucket.arn
}

output "datasets_prefix" {
  description = "Key prefix of datasets."
  value       = var.datasets_prefix
}

output "runs_prefix" {
  description = "Key prefix of runs."
  value       = var.runs_prefix
}
