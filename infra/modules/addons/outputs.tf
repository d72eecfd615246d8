output "kuberay_namespace" {
  description = "Namespace of the KubeRay operator."
  value       = helm_release.kuberay_operator.namespace
}

output "monitoring_namespace" {
  description = "Namespace of Prometheus and Grafana."
  value       = helm_release.kube_prometheus_stack.namespace
}
