# The dev environment: EKS with CPU and GPU node groups, the bucket, the job's IAM role
# (IRSA), the image repository, and the cluster add-ons. Outputs feed k8s/overlays/aws.

provider "aws" {
  region = var.region
  default_tags {
    tags = var.tags
  }
}

provider "helm" {
  kubernetes {
    host                   = module.eks.cluster_endpoint
    cluster_ca_certificate = base64decode(module.eks.cluster_certificate_authority)
    exec {
      api_version = "client.authentication.k8s.io/v1beta1"
      command     = "aws"
      args        = ["eks", "get-token", "--cluster-name", module.eks.cluster_name, "--region", var.region]
    }
  }
}

# The addons module's StorageClass.
provider "kubernetes" {
  host                   = module.eks.cluster_endpoint
  cluster_ca_certificate = base64decode(module.eks.cluster_certificate_authority)
  exec {
    api_version = "client.authentication.k8s.io/v1beta1"
    command     = "aws"
    args        = ["eks", "get-token", "--cluster-name", module.eks.cluster_name, "--region", var.region]
  }
}

module "eks" {
  source = "../../modules/eks"

  cluster_name            = var.name
  kubernetes_version      = var.kubernetes_version
  subnet_ids              = var.subnet_ids
  api_public_access_cidrs = var.api_public_access_cidrs
  system_instance_types   = var.system_instance_types
  gpu_instance_types      = var.gpu_instance_types
  gpu_capacity_type       = var.gpu_capacity_type
  gpu_node_max_size       = var.gpu_node_max_size
  gpu_accelerator         = var.gpu_accelerator
}

module "storage" {
  source = "../../modules/storage"

  bucket_name                        = var.bucket_name
  noncurrent_version_expiration_days = var.noncurrent_version_expiration_days
}

module "irsa" {
  source = "../../modules/irsa"

  role_name         = "${var.name}-job"
  oidc_provider_arn = module.eks.oidc_provider_arn
  oidc_issuer_url   = module.eks.oidc_issuer_url
  namespace         = "multilabel"
  service_account   = "multilabel-job"
  bucket_arn        = module.storage.bucket_arn
  kms_key_arn       = module.storage.kms_key_arn
  datasets_prefix   = module.storage.datasets_prefix
  runs_prefix       = module.storage.runs_prefix
}

module "ecr" {
  source = "../../modules/ecr"

  repository_name = "multilabel-job"
}

module "addons" {
  source = "../../modules/addons"

  cluster_name                  = module.eks.cluster_name
  region                        = var.region
  kuberay_operator_version      = var.kuberay_operator_version
  kube_prometheus_stack_version = var.kube_prometheus_stack_version
  cluster_autoscaler_version    = var.cluster_autoscaler_version
  prometheus_storage_size       = var.prometheus_storage_size
  prometheus_retention_size     = var.prometheus_retention_size
  alert_receiver                = var.alert_receiver
  alert_receiver_secret_name    = var.alert_receiver_secret_name

  # Add-ons need nodes to run on.
  depends_on = [module.eks]
}
