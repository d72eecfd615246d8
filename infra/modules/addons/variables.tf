variable "kuberay_operator_version" {
  type        = string
  description = "Version of the kuberay-operator Helm chart. 1.6 or newer: the RayJob uses authOptions (Ray token auth)."
  default     = "1.6.2"
}

variable "kuberay_namespace" {
  type        = string
  description = "Namespace of the KubeRay operator; k8s/base's NetworkPolicy lets it reach the Ray head from there."
  default     = "kuberay-system"
}

variable "kube_prometheus_stack_version" {
  type        = string
  description = "Version of the kube-prometheus-stack Helm chart (Prometheus operator, Prometheus, Grafana)."
  default     = "75.15.1"
}

variable "monitoring_namespace" {
  type        = string
  description = "Namespace of Prometheus and Grafana; k8s/base's NetworkPolicy lets it scrape the job's metrics ports."
  default     = "monitoring"
}

variable "prometheus_retention" {
  type        = string
  description = "How long Prometheus keeps samples, e.g. \"15d\"."
  default     = "15d"
}

variable "nvidia_device_plugin_version" {
  type        = string
  description = "Version of the NVIDIA device plugin Helm chart, which advertises nvidia.com/gpu on GPU nodes (with GPU feature discovery and NFD: values/nvidia-device-plugin.yaml, written against chart 0.17.x)."
  default     = "0.17.1"
}

variable "cluster_name" {
  type        = string
  description = "Name of the EKS cluster: the cluster autoscaler discovers its node groups by it, and its IAM role may scale only that cluster's Auto Scaling groups."
}

variable "region" {
  type        = string
  description = "AWS region of the cluster (the cluster autoscaler's AWS_REGION)."
}

variable "cluster_autoscaler_version" {
  type        = string
  description = "Version of the cluster-autoscaler Helm chart; its app version must match the cluster's Kubernetes minor (9.46.x: cluster-autoscaler 1.32, for Kubernetes 1.32)."
  default     = "9.46.6"
}

variable "cluster_autoscaler_scale_down_unneeded_time" {
  type        = string
  description = "How long a node (a GPU node after a run) stays unneeded before the cluster autoscaler removes it, e.g. \"10m\"."
  default     = "10m"

  validation {
    condition     = can(regex("^[0-9]+(s|m|h)$", var.cluster_autoscaler_scale_down_unneeded_time))
    error_message = "Give a duration such as 10m."
  }
}

variable "storage_class_name" {
  type        = string
  description = "Name of the encrypted gp3 StorageClass this module makes (the cluster's default) for the Prometheus and Alertmanager volumes."
  default     = "gp3"
}

variable "prometheus_storage_size" {
  type        = string
  description = "Size of Prometheus' EBS volume, e.g. \"50Gi\"; it can be grown later (the StorageClass allows expansion)."
  default     = "50Gi"
}

variable "prometheus_retention_size" {
  type        = string
  description = "Prometheus deletes its oldest data beyond this size, e.g. \"40GB\" (Prometheus' GB is 2^30 bytes): keep it below prometheus_storage_size, or the volume fills up and Prometheus stops."
  default     = "40GB"
}

variable "alertmanager_storage_size" {
  type        = string
  description = "Size of Alertmanager's EBS volume (silences and notification log), e.g. \"2Gi\"."
  default     = "2Gi"
}

variable "alert_receiver" {
  type        = string
  description = "Where the job's critical and warning alerts go: \"none\" (the default: they show in Prometheus and Alertmanager but notify nobody), \"slack\" (a Slack incoming webhook) or \"webhook\" (Alertmanager's webhook JSON POSTed to a URL). For slack and webhook, first create the Secret alert_receiver_secret_name in the monitoring namespace with the URL under key `url`."
  default     = "none"

  validation {
    condition     = contains(["none", "slack", "webhook"], var.alert_receiver)
    error_message = "alert_receiver must be none, slack or webhook."
  }
}

variable "alert_receiver_secret_name" {
  type        = string
  description = "Kubernetes Secret (monitoring namespace, key `url`) holding the Slack or webhook URL of alert_receiver; created by the operator, so that the URL stays out of Terraform state and git."
  default     = "alertmanager-receiver"
}

variable "tags" {
  type        = map(string)
  description = "Tags added to the AWS resources of this module (the cluster autoscaler's IAM role)."
  default     = {}
}
