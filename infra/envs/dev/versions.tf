terraform {
  required_version = ">= 1.6"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.80, < 7.0"
    }
    helm = {
      source  = "hashicorp/helm"
      version = ">= 2.12, < 3.0"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = ">= 2.23, < 3.0"
    }
    tls = {
      source  = "hashicorp/tls"
      version = ">= 4.0, < 5.0"
    }
  }

  # State is local by default. For a shared environment keep it in S3 with locking:
  # backend "s3" {
  #   bucket       = "YOUR-TERRAFORM-STATE-BUCKET"
  #   key          = "multilabel/dev/terraform.tfstate"
  #   region       = "us-east-1"
  #   use_lockfile = true
  # }
}
