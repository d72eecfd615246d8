variable "region" {
  type        = string
  description = "AWS region of every resource (and AWS_REGION in the aws overlay)."
  default     = "us-east-1"
}

variable "name" {
  type        = string
  description = "Name prefix of the cluster, role and repository."
  default     = "multilabel-dev"
}

variable "subnet_ids" {
  type        = list(string)
  description = "Existing private subnets (two or more AZs, with NAT egress) for the cluster and its nodes."
}

variable "api_public_access_cidrs" {
  type        = list(string)
  description = "CIDR blocks allowed to reach the Kubernetes API: where you run terraform and kubectl."
}

variable "bucket_name" {
  type        = string
  description = "Globally unique name of the bucket for datasets and runs."
}

variable "kubernetes_version" {
  type        = string
  description = "Kubernetes minor version of the cluster."
  default     = "1.32"
}

variable "system_instance_types" {
  type        = list(string)
  description = "Instance types of the CPU node group."
  default     = ["m6i.xlarge"]
}

variable "gpu_instance_types" {
  type        = list(string)
  description = "Instance types of the GPU node group (cost: the main item of the bill). Each must fit one Ray GPU worker pod (6 CPUs, 24 GiB, 1 GPU requested): g5.2xlarge or larger; g5.xlarge (4 vCPUs, 16 GiB) does not. With gpu_capacity_type SPOT, give several (e.g. [\"g5.2xlarge\", \"g5.4xlarge\"]): EKS then draws from several spot pools."
  default     = ["g5.2xlarge"]
}

variable "gpu_capacity_type" {
  type        = string
  description = "ON_DEMAND (default) or SPOT for the GPU worker nodes only; the system nodes (Ray head, driver) stay on-demand whatever this says. With SPOT, list several instance types in gpu_instance_types so that a reclaimed type can be replaced by another (docs/deploy.md, \"Spot GPU workers\")."
  default     = "ON_DEMAND"

  validation {
    condition     = contains(["ON_DEMAND", "SPOT"], var.gpu_capacity_type)
    error_message = "gpu_capacity_type must be ON_DEMAND or SPOT."
  }
}

variable "gpu_node_max_size" {
  type        = number
  description = "Cap on GPU nodes (caps GPU spend). The cluster autoscaler starts GPU nodes, up to this many, while RayJob workers are Pending, and removes them when idle: no apply is needed to start or stop them. At least the RayJob's worker count (2)."
  default     = 2
}

variable "gpu_accelerator" {
  type        = string
  description = "k8s.amazonaws.com/accelerator label of GPU nodes: nvidia-a10g for g5, nvidia-l4 for g6."
  default     = "nvidia-a10g"
}

variable "noncurrent_version_expiration_days" {
  type        = number
  description = "Days to keep overwritten/deleted checkpoint versions under runs/."
  default     = 30
}

variable "kuberay_operator_version" {
  type        = string
  description = "kuberay-operator Helm chart version (1.6 or newer)."
  default     = "1.6.2"
}

variable "kube_prometheus_stack_version" {
  type        = string
  description = "kube-prometheus-stack Helm chart version."
  default     = "75.15.1"
}

variable "cluster_autoscaler_version" {
  type        = string
  description = "cluster-autoscaler Helm chart version; its app version must match kubernetes_version's minor (9.46.x: 1.32)."
  default     = "9.46.6"
}

variable "prometheus_storage_size" {
  type        = string
  description = "Size of Prometheus' gp3 EBS volume."
  default     = "50Gi"
}

variable "prometheus_retention_size" {
  type        = string
  description = "Prometheus deletes its oldest data beyond this size (GB = 2^30 bytes): keep it below prometheus_storage_size."
  default     = "40GB"
}

variable "alert_receiver" {
  type        = string
  description = "none (default: alerts notify nobody, see them in Prometheus/Alertmanager), slack or webhook. For slack/webhook create the Secret alert_receiver_secret_name (namespace monitoring, key url) first."
  default     = "none"
}

variable "alert_receiver_secret_name" {
  type        = string
  description = "Kubernetes Secret in namespace monitoring whose key `url` is the Slack or webhook URL (kept out of Terraform state)."
  default     = "alertmanager-receiver"
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = { project = "multilabel-job", environment = "dev" }
}
