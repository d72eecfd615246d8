output "role_arn" {
  description = "ARN of the job's role: the aws overlay's eks.amazonaws.com/role-arn annotation."
  value       = aws_iam_role.job.arn
}

output "role_name" {
  description = "Name of the job's role."
  value       = aws_iam_role.job.name
}
