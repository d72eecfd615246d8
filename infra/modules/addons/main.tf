# Cluster add-ons the job relies on: the KubeRay operator (RayJob) with its metrics scraped,
# kube-prometheus-stack (PodMonitor, PrometheusRule, Grafana, Alertmanager) on persistent
# gp3 volumes, the NVIDIA device plugin (nvidia.com/gpu) with GPU feature discovery and
# node-feature-discovery, and the cluster autoscaler that starts and stops the GPU nodes.
# (The EKS managed add-ons, VPC CNI with network policy and the EBS CSI driver included, are
# in infra/modules/eks.)

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  partition = data.aws_partition.current.partition
  account   = data.aws_caller_identity.current.account_id
}

# --- storage -------------------------------------------------------------------------------
#
# EKS 1.30 and later make no default StorageClass. Prometheus and Alertmanager get encrypted
# gp3 EBS volumes from the EBS CSI driver add-on; WaitForFirstConsumer creates each volume in
# the availability zone of the node its pod is scheduled to. Delete: the volume goes with its
# PersistentVolumeClaim (deleting the kube-prometheus-stack release keeps the claims).
resource "kubernetes_storage_class_v1" "gp3" {
  metadata {
    name = var.storage_class_name
    annotations = {
      "storageclass.kubernetes.io/is-default-class" = "true"
    }
  }
  storage_provisioner    = "ebs.csi.aws.com"
  reclaim_policy         = "Delete"
  volume_binding_mode    = "WaitForFirstConsumer"
  allow_volume_expansion = true
  parameters = {
    type                        = "gp3"
    encrypted                   = "true"
    "csi.storage.k8s.io/fstype" = "ext4"
  }
}

# --- KubeRay ---------------------------------------------------------------------------------

resource "helm_release" "kuberay_operator" {
  name             = "kuberay-operator"
  repository       = "https://ray-project.github.io/kuberay-helm/"
  chart            = "kuberay-operator"
  version          = var.kuberay_operator_version
  namespace        = var.kuberay_namespace
  create_namespace = true
  atomic           = true
  timeout          = 600

  # Its ServiceMonitor: see the values file.
  values = [file("${path.module}/values/kuberay-operator.yaml")]

  # The ServiceMonitor kind comes with kube-prometheus-stack's CRDs.
  depends_on = [helm_release.kube_prometheus_stack]
}

# --- monitoring --------------------------------------------------------------------------------

locals {
  # The job's alerts reach a receiver only when var.alert_receiver names one.
  alert_receiver_values = var.alert_receiver == "none" ? [] : [
    templatefile("${path.module}/values/alertmanager-${var.alert_receiver}.yaml", {
      alert_receiver_secret_name = var.alert_receiver_secret_name
    })
  ]
}

resource "helm_release" "kube_prometheus_stack" {
  name             = "kube-prometheus-stack"
  repository       = "https://prometheus-community.github.io/helm-charts"
  chart            = "kube-prometheus-stack"
  version          = var.kube_prometheus_stack_version
  namespace        = var.monitoring_namespace
  create_namespace = true
  atomic           = true
  timeout          = 900

  values = concat([
    templatefile("${path.module}/values/kube-prometheus-stack.yaml", {
      prometheus_retention      = var.prometheus_retention
      prometheus_retention_size = var.prometheus_retention_size
      prometheus_storage_size   = var.prometheus_storage_size
      alertmanager_storage_size = var.alertmanager_storage_size
      storage_class_name        = kubernetes_storage_class_v1.gp3.metadata[0].name
    })
  ], local.alert_receiver_values)
}

# --- GPU --------------------------------------------------------------------------------------

resource "helm_release" "nvidia_device_plugin" {
  name             = "nvidia-device-plugin"
  repository       = "https://nvidia.github.io/k8s-device-plugin"
  chart            = "nvidia-device-plugin"
  version          = var.nvidia_device_plugin_version
  namespace        = "nvidia-device-plugin"
  create_namespace = true
  atomic           = true

  # On the GPU node group only, with GPU feature discovery and NFD labelling the nodes so
  # that the chart's default node affinity admits them: see the values file.
  values = [file("${path.module}/values/nvidia-device-plugin.yaml")]
}

# --- cluster autoscaler ---------------------------------------------------------------------
#
# Adds GPU nodes while the RayJob's worker pods are Pending and removes them once idle, so
# nobody re-applies Terraform to start or stop GPU nodes. It discovers the managed node
# groups by the tags EKS puts on their Auto Scaling groups, and learns what a GPU node would
# look like from the node template tags infra/modules/eks puts there (scale from zero).

locals {
  cluster_autoscaler_namespace       = "kube-system"
  cluster_autoscaler_service_account = "cluster-autoscaler"
}

data "aws_iam_policy_document" "pod_identity_assume" {
  statement {
    actions = ["sts:AssumeRole", "sts:TagSession"]
    principals {
      type        = "Service"
      identifiers = ["pods.eks.amazonaws.com"]
    }
  }
}

# The autoscaler's policy from its AWS README (cluster-autoscaler 1.32,
# cloudprovider/aws/README.md "Full Cluster Autoscaler Features Policy"), narrowed: the two
# actions that change capacity only on Auto Scaling groups of this cluster's managed node
# groups, DescribeNodegroup only on this cluster's node groups.
data "aws_iam_policy_document" "cluster_autoscaler" {
  statement {
    sid = "ReadScalingGroupsAndInstanceTypes"
    # These actions support no resource-level permissions: "*" is the only resource they take.
    actions = [
      "autoscaling:DescribeAutoScalingGroups",
      "autoscaling:DescribeAutoScalingInstances",
      "autoscaling:DescribeLaunchConfigurations",
      "autoscaling:DescribeScalingActivities",
      "ec2:DescribeImages",
      "ec2:DescribeInstanceTypes",
      "ec2:DescribeLaunchTemplateVersions",
      "ec2:GetInstanceTypesFromInstanceRequirements",
    ]
    resources = ["*"]
  }

  statement {
    sid       = "ReadManagedNodeGroups"
    actions   = ["eks:DescribeNodegroup"]
    resources = ["arn:${local.partition}:eks:${var.region}:${local.account}:nodegroup/${var.cluster_name}/*/*"]
  }

  statement {
    sid = "ScaleThisClustersGroups"
    actions = [
      "autoscaling:SetDesiredCapacity",
      "autoscaling:TerminateInstanceInAutoScalingGroup",
    ]
    resources = ["arn:${local.partition}:autoscaling:${var.region}:${local.account}:autoScalingGroup:*:autoScalingGroupName/*"]
    # EKS tags the Auto Scaling group of each managed node group with eks:cluster-name (the
    # autoscaler reads it back to call eks:DescribeNodegroup: aws_manager.go).
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/eks:cluster-name"
      values   = [var.cluster_name]
    }
  }
}

resource "aws_iam_role" "cluster_autoscaler" {
  name               = "${var.cluster_name}-cluster-autoscaler"
  assume_role_policy = data.aws_iam_policy_document.pod_identity_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy" "cluster_autoscaler" {
  name   = "cluster-autoscaler"
  role   = aws_iam_role.cluster_autoscaler.id
  policy = data.aws_iam_policy_document.cluster_autoscaler.json
}

resource "aws_eks_pod_identity_association" "cluster_autoscaler" {
  cluster_name    = var.cluster_name
  namespace       = local.cluster_autoscaler_namespace
  service_account = local.cluster_autoscaler_service_account
  role_arn        = aws_iam_role.cluster_autoscaler.arn
  tags            = var.tags
}

resource "helm_release" "cluster_autoscaler" {
  name       = "cluster-autoscaler"
  repository = "https://kubernetes.github.io/autoscaler"
  chart      = "cluster-autoscaler"
  version    = var.cluster_autoscaler_version
  namespace  = local.cluster_autoscaler_namespace
  atomic     = true
  timeout    = 600

  values = [
    templatefile("${path.module}/values/cluster-autoscaler.yaml", {
      region                                      = var.region
      cluster_name                                = var.cluster_name
      cluster_autoscaler_scale_down_unneeded_time = var.cluster_autoscaler_scale_down_unneeded_time
    })
  ]

  # Pod Identity hands credentials to pods started after the association exists.
  depends_on = [
    aws_eks_pod_identity_association.cluster_autoscaler,
    aws_iam_role_policy.cluster_autoscaler,
  ]
}
