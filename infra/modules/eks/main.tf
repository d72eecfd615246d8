# EKS control plane, its IAM OIDC provider (for IRSA), the EKS managed add-ons (VPC CNI with
# network policy enforcement, kube-proxy, CoreDNS, Pod Identity agent, EBS CSI driver), a
# CPU "system" node group and a GPU node group on the NVIDIA AMI that the cluster
# autoscaler (infra/modules/addons) scales from zero and back.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_root = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"
  # Key policies, not IAM policies: "Resource": "*" there means the key itself.
  account_administers_key = {
    Sid       = "AccountAdministers"
    Effect    = "Allow"
    Principal = { AWS = local.account_root }
    Action    = "kms:*"
    Resource  = "*"
  }
}

# --- control plane ---------------------------------------------------------------------

data "aws_iam_policy_document" "cluster_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["eks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "cluster" {
  name               = "${var.cluster_name}-cluster"
  assume_role_policy = data.aws_iam_policy_document.cluster_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "cluster" {
  role       = aws_iam_role.cluster.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonEKSClusterPolicy"
}

# Envelope encryption of Kubernetes Secrets (the Ray token, S3 keys where used).
resource "aws_kms_key" "secrets" {
  description         = "Encrypts Kubernetes Secrets of EKS cluster ${var.cluster_name}"
  enable_key_rotation = true
  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [local.account_administers_key]
  })
  tags = var.tags
}

resource "aws_cloudwatch_log_group" "cluster" {
  # The name EKS writes to; made here so that it has a retention and a key.
  name              = "/aws/eks/${var.cluster_name}/cluster"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.logs.arn
  tags              = var.tags
}

resource "aws_kms_key" "logs" {
  description         = "Encrypts the control plane logs of EKS cluster ${var.cluster_name}"
  enable_key_rotation = true
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      local.account_administers_key,
      {
        Sid       = "CloudWatchLogsUse"
        Effect    = "Allow"
        Principal = { Service = "logs.${data.aws_region.current.name}.amazonaws.com" }
        Action    = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
        Resource  = "*"
        Condition = {
          ArnLike = {
            "kms:EncryptionContext:aws:logs:arn" = "arn:${data.aws_partition.current.partition}:logs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:log-group:/aws/eks/${var.cluster_name}/cluster"
          }
        }
      },
    ]
  })
  tags = var.tags
}

resource "aws_eks_cluster" "this" {
  # checkov:skip=CKV_AWS_38:public_access_cidrs is var.api_public_access_cidrs, whose validation refuses 0.0.0.0/0; checkov cannot see a value that has no default
  # checkov:skip=CKV_AWS_39:Terraform's helm provider and kubectl must reach the API from outside the VPC; the public endpoint is limited to var.api_public_access_cidrs (0.0.0.0/0 is refused by validation)
  name     = var.cluster_name
  version  = var.kubernetes_version
  role_arn = aws_iam_role.cluster.arn

  vpc_config {
    subnet_ids              = var.subnet_ids
    endpoint_private_access = true
    endpoint_public_access  = true
    public_access_cidrs     = var.api_public_access_cidrs
  }

  access_config {
    authentication_mode                         = "API"
    bootstrap_cluster_creator_admin_permissions = true
  }

  encryption_config {
    resources = ["secrets"]
    provider {
      key_arn = aws_kms_key.secrets.arn
    }
  }

  enabled_cluster_log_types = ["api", "audit", "authenticator", "controllerManager", "scheduler"]

  tags = var.tags

  depends_on = [
    aws_iam_role_policy_attachment.cluster,
    aws_cloudwatch_log_group.cluster,
  ]
}

# --- IAM OIDC provider: lets pods assume IAM roles (IRSA) -------------------------------

data "tls_certificate" "oidc" {
  url = aws_eks_cluster.this.identity[0].oidc[0].issuer
}

resource "aws_iam_openid_connect_provider" "this" {
  url             = aws_eks_cluster.this.identity[0].oidc[0].issuer
  client_id_list  = ["sts.amazonaws.com"]
  thumbprint_list = [data.tls_certificate.oidc.certificates[0].sha1_fingerprint]
  tags            = var.tags
}

# --- EKS managed add-ons ----------------------------------------------------------------
#
# The add-ons an EKS cluster needs, managed by EKS (versions default to the one EKS
# recommends for the cluster's Kubernetes version; pin them with var.addon_versions).
# OVERWRITE takes over the self-managed vpc-cni, kube-proxy and CoreDNS that EKS installs
# with a new cluster.
#
# The DaemonSet add-ons come before the node groups, so that the first nodes start with
# them: vpc-cni with its network policy agent (without it the NetworkPolicies of k8s/base
# are accepted but not enforced), kube-proxy and the Pod Identity agent. CoreDNS and the
# EBS CSI controller are Deployments: they come after the nodes they run on.

resource "aws_eks_addon" "vpc_cni" {
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = "vpc-cni"
  addon_version               = lookup(var.addon_versions, "vpc-cni", null)
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "OVERWRITE"
  # https://docs.aws.amazon.com/eks/latest/userguide/cni-network-policy-configure.html
  configuration_values = jsonencode({
    enableNetworkPolicy = "true"
  })
  tags = var.tags
}

resource "aws_eks_addon" "kube_proxy" {
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = "kube-proxy"
  addon_version               = lookup(var.addon_versions, "kube-proxy", null)
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "OVERWRITE"
  tags                        = var.tags
}

resource "aws_eks_addon" "pod_identity_agent" {
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = "eks-pod-identity-agent"
  addon_version               = lookup(var.addon_versions, "eks-pod-identity-agent", null)
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "OVERWRITE"
  tags                        = var.tags
}

resource "aws_eks_addon" "coredns" {
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = "coredns"
  addon_version               = lookup(var.addon_versions, "coredns", null)
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "OVERWRITE"
  tags                        = var.tags

  depends_on = [aws_eks_node_group.system]
}

# The EBS CSI driver (persistent volumes, e.g. for Prometheus) calls the EC2 API with its
# own role, given to its controller's ServiceAccount through EKS Pod Identity.
data "aws_iam_policy_document" "pod_identity_assume" {
  statement {
    actions = ["sts:AssumeRole", "sts:TagSession"]
    principals {
      type        = "Service"
      identifiers = ["pods.eks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "ebs_csi" {
  name               = "${var.cluster_name}-ebs-csi"
  assume_role_policy = data.aws_iam_policy_document.pod_identity_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "ebs_csi" {
  role       = aws_iam_role.ebs_csi.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy"
}

resource "aws_eks_pod_identity_association" "ebs_csi" {
  cluster_name    = aws_eks_cluster.this.name
  namespace       = "kube-system"
  service_account = "ebs-csi-controller-sa"
  role_arn        = aws_iam_role.ebs_csi.arn
  tags            = var.tags
}

resource "aws_eks_addon" "ebs_csi" {
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = "aws-ebs-csi-driver"
  addon_version               = lookup(var.addon_versions, "aws-ebs-csi-driver", null)
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "OVERWRITE"
  tags                        = var.tags

  depends_on = [
    aws_eks_node_group.system,
    aws_eks_addon.pod_identity_agent,
    aws_eks_pod_identity_association.ebs_csi,
    aws_iam_role_policy_attachment.ebs_csi,
  ]
}

# --- nodes -----------------------------------------------------------------------------

data "aws_iam_policy_document" "node_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "node" {
  name               = "${var.cluster_name}-node"
  assume_role_policy = data.aws_iam_policy_document.node_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "node" {
  for_each = toset([
    "AmazonEKSWorkerNodePolicy",
    "AmazonEKS_CNI_Policy",
    "AmazonEC2ContainerRegistryReadOnly",
  ])
  role       = aws_iam_role.node.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/${each.value}"
}

# Ray head, job submitter, KubeRay operator, Prometheus. Always on-demand, whatever
# var.gpu_capacity_type says: the Ray head holds the driver and the Ray Train controller, and
# losing it ends the run (only worker nodes can be drained and replaced mid-run).
resource "aws_eks_node_group" "system" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "system"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = var.subnet_ids
  version         = var.kubernetes_version
  ami_type        = "AL2023_x86_64_STANDARD"
  instance_types  = var.system_instance_types
  capacity_type   = "ON_DEMAND"

  scaling_config {
    min_size     = var.system_node_min_size
    desired_size = var.system_node_desired_size
    max_size     = var.system_node_max_size
  }

  # EKS tags the group's Auto Scaling group for the cluster autoscaler, which then owns the
  # desired size (between min and max): Terraform sets it at creation only.
  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }

  labels = {
    "multilabel.io/pool" = "system"
  }

  tags = var.tags
  depends_on = [
    aws_iam_role_policy_attachment.node,
    aws_eks_addon.vpc_cni,
    aws_eks_addon.kube_proxy,
    aws_eks_addon.pod_identity_agent,
  ]
}

# Ray GPU workers. The NVIDIA AMI brings the driver and container toolkit; the device
# plugin (addons module) advertises nvidia.com/gpu. The taint keeps other pods off.
#
# On SPOT (var.gpu_capacity_type), EKS picks from every type in var.gpu_instance_types
# (capacity-optimized allocation) and, with Capacity Rebalancing, drains a node that AWS is
# about to reclaim; the worker pod's preStop hook turns that drain into a Ray preemption
# (k8s/base/rayjob.yaml).
#
# Nobody sets its size by hand: it starts at zero nodes, the cluster autoscaler (addons
# module) adds nodes while GPU pods are Pending and removes them once they are idle, up to
# var.gpu_node_max_size. EKS tags the group's Auto Scaling group with
# k8s.io/cluster-autoscaler/enabled=true and k8s.io/cluster-autoscaler/<cluster>=owned, which
# is how the autoscaler discovers it (and what its IAM policy is conditioned on).
resource "aws_eks_node_group" "gpu" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "gpu"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = var.subnet_ids
  version         = var.kubernetes_version
  ami_type        = "AL2023_x86_64_NVIDIA"
  instance_types  = var.gpu_instance_types
  capacity_type   = var.gpu_capacity_type
  disk_size       = var.gpu_disk_size_gib

  scaling_config {
    min_size     = 0
    desired_size = 0
    max_size     = var.gpu_node_max_size
  }

  # The autoscaler owns the desired size; a later apply must not put it back to 0 mid-run.
  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }

  labels = {
    "multilabel.io/pool" = "gpu"
    # Tells the autoscaler a node is a GPU node before the device plugin advertises
    # nvidia.com/gpu, so that it waits for it instead of adding more nodes (cluster-autoscaler
    # cloudprovider/aws: GPULabel; README "Special note on GPU instances").
    "k8s.amazonaws.com/accelerator" = var.gpu_accelerator
  }

  taint {
    key    = "nvidia.com/gpu"
    value  = "true"
    effect = "NO_SCHEDULE"
  }

  # The same node template on the node group (read by the autoscaler's eks:DescribeNodegroup
  # call) as on its Auto Scaling group (below).
  tags = merge(var.tags, local.gpu_node_template_tags)
  depends_on = [
    aws_iam_role_policy_attachment.node,
    aws_eks_addon.vpc_cni,
    aws_eks_addon.kube_proxy,
    aws_eks_addon.pod_identity_agent,
  ]
}

# --- scaling the GPU group from zero -----------------------------------------------------
#
# With no GPU node running, the cluster autoscaler decides whether a new node of the group
# would fit a Pending pod from a node template: capacity from the instance type, labels and
# taints from tags of the Auto Scaling group (k8s.io/cluster-autoscaler/node-template/...),
# to which it adds, for EKS managed node groups, the labels and taints that
# eks:DescribeNodegroup returns (cluster-autoscaler 1.32 cloudprovider/aws/aws_manager.go,
# buildNodeFromTemplate). EKS does not copy node group tags to the Auto Scaling group, so the
# tags are put on it here: the template does not then hang on the DescribeNodegroup call
# (whose failures the autoscaler only logs, and which it makes only while the group has never
# had a node). tests/deploy/test_autoscaling.py checks that this template matches the node
# group's labels and taint and admits the RayJob's GPU worker pod.

data "aws_ec2_instance_type" "gpu" {
  for_each      = toset(var.gpu_instance_types)
  instance_type = each.value
}

locals {
  # The fewest GPUs any of the group's instance types has: the autoscaler must not expect more.
  gpus_per_gpu_node = min([for t in data.aws_ec2_instance_type.gpu : t.gpus[0].count]...)

  gpu_node_template_tags = {
    "k8s.io/cluster-autoscaler/node-template/label/multilabel.io/pool"            = "gpu"
    "k8s.io/cluster-autoscaler/node-template/label/k8s.amazonaws.com/accelerator" = var.gpu_accelerator
    "k8s.io/cluster-autoscaler/node-template/taint/nvidia.com/gpu"                = "true:NoSchedule"
    "k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"            = tostring(local.gpus_per_gpu_node)
  }
}

resource "aws_autoscaling_group_tag" "gpu_node_template" {
  for_each               = local.gpu_node_template_tags
  autoscaling_group_name = aws_eks_node_group.gpu.resources[0].autoscaling_groups[0].name

  tag {
    key                 = each.key
    value               = each.value
    propagate_at_launch = false
  }
}
