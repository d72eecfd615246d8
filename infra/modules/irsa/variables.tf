variable "role_name" {
  type        = string
  description = "Name of the IAM role the job's pods assume."
}

variable "oidc_provider_arn" {
  type        = string
  description = "ARN of the cluster's IAM OIDC provider (output of the eks module)."
}

variable "oidc_issuer_url" {
  type        = string
  description = "Issuer URL of the cluster's OIDC provider, with or without https://."
}

variable "namespace" {
  type        = string
  description = "Kubernetes namespace of the job's ServiceAccount (k8s/base: multilabel)."
  default     = "multilabel"
}

variable "service_account" {
  type        = string
  description = "Name of the job's ServiceAccount (k8s/base: multilabel-job)."
  default     = "multilabel-job"
}

variable "bucket_arn" {
  type        = string
  description = "ARN of the bucket that holds datasets and runs."
}

variable "kms_key_arn" {
  type        = string
  description = "ARN of the KMS key that encrypts the bucket (the role may use it, nothing more)."
}

variable "datasets_prefix" {
  type        = string
  description = "Key prefix, without slashes, that the job may only read."
  default     = "datasets"
}

variable "runs_prefix" {
  type        = string
  description = "Key prefix, without slashes, that the job may read and write (outputs, checkpoints)."
  default     = "runs"
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource of this module."
  default     = {}
}
