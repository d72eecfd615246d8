variable "cluster_name" {
  type        = string
  description = "Name of the EKS cluster."
}

variable "kubernetes_version" {
  type        = string
  description = "Kubernetes minor version of the control plane and node groups, e.g. \"1.32\"."
  default     = "1.32"
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets (at least two availability zones, with a NAT route) for the control plane's interfaces and the nodes."
}

variable "api_public_access_cidrs" {
  type        = list(string)
  description = "CIDR blocks allowed to reach the public API endpoint (your office or VPN egress). Never 0.0.0.0/0."

  validation {
    condition     = length(var.api_public_access_cidrs) > 0 && !contains(var.api_public_access_cidrs, "0.0.0.0/0")
    error_message = "Give at least one CIDR, and not 0.0.0.0/0."
  }
}

variable "system_instance_types" {
  type        = list(string)
  description = "Instance types of the CPU node group (Ray head, submitter, KubeRay, Prometheus)."
  default     = ["m6i.xlarge"]
}

variable "system_node_min_size" {
  type        = number
  description = "Minimum size of the CPU node group."
  default     = 1
}

variable "system_node_desired_size" {
  type        = number
  description = "Size of the CPU node group at creation; afterwards the cluster autoscaler sets it, between min and max."
  default     = 2
}

variable "system_node_max_size" {
  type        = number
  description = "Maximum size of the CPU node group."
  default     = 3
}

variable "gpu_instance_types" {
  type        = list(string)
  description = "Instance types of the GPU node group; the largest cost item (g5.2xlarge: 1 A10G GPU, 8 vCPUs, 32 GiB). Every type must fit the RayJob's GPU worker pod (tests/deploy/test_capacity.py, infra/instance_types.yaml)."
  default     = ["g5.2xlarge"]
}

variable "gpu_capacity_type" {
  type        = string
  description = "ON_DEMAND or SPOT for the GPU node group. SPOT is cheaper; the job resumes from checkpoints when a node is reclaimed."
  default     = "ON_DEMAND"

  validation {
    condition     = contains(["ON_DEMAND", "SPOT"], var.gpu_capacity_type)
    error_message = "gpu_capacity_type must be ON_DEMAND or SPOT."
  }
}

variable "gpu_node_max_size" {
  type        = number
  description = "Upper bound on GPU nodes: caps the GPU spend. The cluster autoscaler (addons module) runs between 0 and this many GPU nodes, as the Pending GPU pods need; nobody sets the current size."
  default     = 2
}

variable "gpu_accelerator" {
  type        = string
  description = "Value of the k8s.amazonaws.com/accelerator label of GPU nodes (the cluster autoscaler's GPU label on AWS), e.g. nvidia-a10g for g5, nvidia-l4 for g6."
  default     = "nvidia-a10g"
}

variable "gpu_disk_size_gib" {
  type        = number
  description = "Root volume of each GPU node in GiB (the CUDA image is several GB)."
  default     = 100
}

variable "addon_versions" {
  type        = map(string)
  description = "Versions of the EKS managed add-ons by name (vpc-cni, kube-proxy, coredns, eks-pod-identity-agent, aws-ebs-csi-driver); a name left out gets the version EKS recommends for the cluster's Kubernetes version."
  default     = {}
}

variable "log_retention_days" {
  type        = number
  description = "Days to keep the control plane's logs (incl. audit) in CloudWatch."
  default     = 365
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource of this module."
  default     = {}
}
