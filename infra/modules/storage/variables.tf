variable "bucket_name" {
  type        = string
  description = "Globally unique name of the bucket that holds datasets (datasets/) and runs (runs/)."
}

variable "datasets_prefix" {
  type        = string
  description = "Key prefix, without slashes, under which datasets live (the job reads it)."
  default     = "datasets"
}

variable "runs_prefix" {
  type        = string
  description = "Key prefix, without slashes, under which runs and their checkpoints live (the job writes it)."
  default     = "runs"
}

variable "noncurrent_version_expiration_days" {
  type        = number
  description = "Days after which an overwritten or deleted object version under the runs prefix (old checkpoints) is removed. Storage cost grows with this."
  default     = 30
}

variable "force_destroy" {
  type        = bool
  description = "Let `terraform destroy` delete a bucket that still holds objects. Keep false outside throwaway environments."
  default     = false
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource of this module."
  default     = {}
}
