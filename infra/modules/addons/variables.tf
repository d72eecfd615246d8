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
