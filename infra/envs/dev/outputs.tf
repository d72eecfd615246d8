output "job_role_arn" {
  description = "IAM role of the job: eks.amazonaws.com/role-arn in k8s/overlays/aws/serviceaccount-patch.yaml."
  value       = module.irsa.role_arn
}

output "bucket_name" {
  description = "Bucket for datasets and runs: the s3:// URIs in k8s/overlays/aws/rayjob-patch.yaml."
  value       = module.storage.bucket_name
}

output "ecr_repository_url" {
  description = "Image repository: newName in k8s/overlays/aws/kustomization.yaml, and where to docker push."
  value       = module.ecr.repository_url
}

output "region" {
  description = "AWS region: AWS_REGION in k8s/overlays/aws/kustomization.yaml."
  value       = var.region
}

output "cluster_name" {
  description = "EKS cluster name."
  value       = module.eks.cluster_name
}

output "kubeconfig_command" {
  description = "Command that points kubectl at the cluster."
  value       = "aws eks update-kubeconfig --region ${var.region} --name ${module.eks.cluster_name}"
}

output "cluster_autoscaler_role_arn" {
  description = "IAM role of the cluster autoscaler (kube-system/cluster-autoscaler, through EKS Pod Identity)."
  value       = module.addons.cluster_autoscaler_role_arn
}

output "gpu_autoscaling_group_name" {
  description = "Auto Scaling group of the GPU node group, scaled by the cluster autoscaler (aws autoscaling describe-scaling-activities)."
  value       = module.eks.gpu_autoscaling_group_name
}
