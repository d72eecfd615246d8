output "cluster_name" {
  description = "Name of the EKS cluster (aws eks update-kubeconfig --name ...)."
  value       = aws_eks_cluster.this.name
}

output "cluster_endpoint" {
  description = "URL of the Kubernetes API."
  value       = aws_eks_cluster.this.endpoint
}

output "cluster_certificate_authority" {
  description = "Base64 CA certificate of the Kubernetes API."
  value       = aws_eks_cluster.this.certificate_authority[0].data
}

output "oidc_provider_arn" {
  description = "ARN of the IAM OIDC provider (input of the irsa module)."
  value       = aws_iam_openid_connect_provider.this.arn
}

output "oidc_issuer_url" {
  description = "Issuer URL of the cluster's OIDC provider."
  value       = aws_eks_cluster.this.identity[0].oidc[0].issuer
}

output "node_role_arn" {
  description = "ARN of the node role (pulls from ECR)."
  value       = aws_iam_role.node.arn
}

output "addons" {
  description = "EKS managed add-ons and their versions (vpc-cni runs with network policy enforcement on)."
  value = {
    for a in [
      aws_eks_addon.vpc_cni,
      aws_eks_addon.kube_proxy,
      aws_eks_addon.coredns,
      aws_eks_addon.pod_identity_agent,
      aws_eks_addon.ebs_csi,
    ] : a.addon_name => a.addon_version
  }
}

output "gpu_autoscaling_group_name" {
  description = "Auto Scaling group of the GPU node group (the cluster autoscaler sets its desired capacity)."
  value       = aws_eks_node_group.gpu.resources[0].autoscaling_groups[0].name
}
