output "repository_url" {
  description = "URL of the repository: `docker push URL:TAG`, and the aws overlay's image name."
  value       = aws_ecr_repository.this.repository_url
}

output "repository_arn" {
  description = "ARN of the repository."
  value       = aws_ecr_repository.this.arn
}
