#!/bin/sh
# Write k8s/overlays/aws/environment.env (git-ignored) from Terraform's outputs, so that
# `kubectl apply -k k8s/overlays/aws` runs in this AWS account with no tracked file edited.
#
#   k8s/overlays/aws/environment.sh TAG [RUN_NAME] [DATASET]
#
# TAG: the image tag you pushed to the ECR repository. RUN_NAME (default multilabel-train):
# the run folder under runs/; a new name starts a new experiment, the same name resumes.
# DATASET (default demo): the folder under datasets/. TF_DIR (default infra/envs/dev): the
# Terraform environment.
set -eu
tag=${1:?usage: $0 IMAGE_TAG [RUN_NAME] [DATASET]}
run=${2:-multilabel-train}
dataset=${3:-demo}
tf_dir=${TF_DIR:-infra/envs/dev}
here=$(dirname "$0")
output() { terraform -chdir="$tf_dir" output -raw "$1"; }
bucket=$(output bucket_name)
cat > "$here/environment.env.tmp" <<ENV
IMAGE=$(output ecr_repository_url):$tag
DATA_URI=s3://$bucket/datasets/$dataset
OUTPUT_URI=s3://$bucket/runs/$run
JOB_ROLE_ARN=$(output job_role_arn)
AWS_REGION=$(output region)
ENV
mv "$here/environment.env.tmp" "$here/environment.env"
echo "wrote $here/environment.env:" >&2
cat "$here/environment.env" >&2
