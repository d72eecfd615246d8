variable "repository_name" {
  type        = string
  description = "Name of the ECR repository for the job's image."
}

variable "keep_images" {
  type        = number
  description = "How many tagged images to keep; older ones expire (storage cost)."
  default     = 20
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource of this module."
  default     = {}
}
