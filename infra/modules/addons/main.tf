# Cluster add-ons the job relies on: the KubeRay operator (RayJob), kube-prometheus-stack
# (PodMonitor, PrometheusRule, Grafana) and the NVIDIA device plugin (nvidia.com/gpu) with
# GPU feature discovery and node-feature-discovery. (The EKS managed add-ons, VPC CNI with
# network policy included, are in infra/modules/eks.)

resource "helm_release" "kuberay_operator" {
  name             = "kuberay-operator"
  repository       = "https://ray-project.github.io/kuberay-helm/"
  chart            = "kuberay-operator"
  version          = var.kuberay_operator_version
  namespace        = var.kuberay_namespace
  create_namespace = true
  atomic           = true
  timeout          = 600
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

  values = [yamlencode({
    prometheus = {
      prometheusSpec = {
        retention = var.prometheus_retention
        # Pick up the job's PodMonitor and PrometheusRule from any namespace, whatever
        # their labels (k8s/monitoring).
        podMonitorSelectorNilUsesHelmValues     = false
        serviceMonitorSelectorNilUsesHelmValues = false
        ruleSelectorNilUsesHelmValues           = false
        podMonitorNamespaceSelector             = {}
        ruleNamespaceSelector                   = {}
      }
    }
    grafana = {
      sidecar = {
        dashboards = {
          enabled         = true
          searchNamespace = "ALL"
        }
      }
    }
  })]
}

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
