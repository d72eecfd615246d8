output "kuberay_namespace" {
  description = "Namespace of the KubeRay operator."
  value       = helm_release.kuberay_operator.namespace
}

output "monitoring_namespace" {
  description = "Namespace of Prometheus and Grafana."
  value       = helm_release.kube_prometheus_stack.namespace
}

output "cluster_autoscaler_role_arn" {
  description = "IAM role of the cluster autoscaler (given to kube-system/cluster-autoscaler through EKS Pod Identity)."
  value       = aws_iam_role.cluster_autoscaler.arn
}

output "storage_class_name" {
  description = "Default StorageClass (encrypted gp3 EBS) of the cluster."
  value       = kubernetes_storage_class_v1.gp3.metadata[0].name
}
