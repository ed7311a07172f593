#!/usr/bin/env bash
# Back to nothing: removes what make_cluster.sh made in a Google Cloud project, and says what
# it kept. An idle cluster is not free (three on-demand e2-standard-4 system nodes cost about
# half a dollar an hour); the worker pool costs nothing at zero nodes.
#
#   PROJECT=my-project REGION=us-west1 BUCKET=my-lab-tqflow ./deployments/gke/delete_cluster.sh
#
# It removes the cluster (its node pools, the Prefect server and worker in it, and the server's
# database with its blocks, deployments and run history), the image repository, the two service
# accounts and their project roles. The bucket holds the results: it is deleted only when you
# answer yes, or with DELETE_BUCKET=1. Each step looks first: run it again and it does nothing.
#
# Settings (environment): PROJECT (required), REGION (us-west1), CLUSTER (tqflow), BUCKET,
# REPOSITORY (tqflow), DELETE_BUCKET (1: delete the bucket and its contents without asking).
set -euo pipefail

if ! command -v gcloud >/dev/null 2>&1; then
  echo "delete_cluster.sh: gcloud is missing, so nothing was changed" >&2
  exit 2
fi
: "${PROJECT:?set PROJECT to your Google Cloud project}"
REGION=${REGION:-us-west1}
CLUSTER=${CLUSTER:-tqflow}
BUCKET=${BUCKET:-}
BUCKET=${BUCKET#gs://}
REPOSITORY=${REPOSITORY:-tqflow}
POOL=tqflow-workers
DELETE_BUCKET=${DELETE_BUCKET:-}
JOBS_GSA=tqflow-jobs@$PROJECT.iam.gserviceaccount.com
NODES_GSA=tqflow-nodes@$PROJECT.iam.gserviceaccount.com
P=(--project "$PROJECT")

exists() { "$@" >/dev/null 2>&1; }
say() { printf '== %s\n' "$*"; }
kept=()

say "worker pool $POOL, then cluster $CLUSTER in $REGION with the rest and what runs in them"
if exists gcloud container node-pools describe "$POOL" --cluster "$CLUSTER" --region "$REGION" "${P[@]}"; then
  gcloud container node-pools delete "$POOL" --cluster "$CLUSTER" --region "$REGION" --quiet "${P[@]}"
fi
if exists gcloud container clusters describe "$CLUSTER" --region "$REGION" "${P[@]}"; then
  gcloud container clusters delete "$CLUSTER" --region "$REGION" --quiet "${P[@]}"
fi

say "Artifact Registry repository $REPOSITORY in $REGION, with its images"
if exists gcloud artifacts repositories describe "$REPOSITORY" --location "$REGION" "${P[@]}"; then
  gcloud artifacts repositories delete "$REPOSITORY" --location "$REGION" --quiet "${P[@]}"
fi

if [[ -n "$BUCKET" ]]; then
  say "bucket gs://$BUCKET: the batches' results"
  if exists gcloud storage buckets describe "gs://$BUCKET" "${P[@]}"; then
    if [[ -z "$DELETE_BUCKET" && -t 0 ]]; then
      read -r -p "Delete gs://$BUCKET and every result in it? [y/N] " answer
      [[ "$answer" == [yY]* ]] && DELETE_BUCKET=1
    fi
    if [[ "$DELETE_BUCKET" == "1" ]]; then
      gcloud storage rm --recursive "gs://$BUCKET" "${P[@]}"
    else
      kept+=("the bucket gs://$BUCKET and its results (DELETE_BUCKET=1 deletes them)")
    fi
  fi
fi

say "service accounts: $NODES_GSA (and $JOBS_GSA, which earlier versions made)"
for role in roles/container.defaultNodeServiceAccount roles/artifactregistry.reader; do
  gcloud projects remove-iam-policy-binding "$PROJECT" --member "serviceAccount:$NODES_GSA" \
    --role "$role" --condition None --format none >/dev/null 2>&1 || true
done
for account in "$JOBS_GSA" "$NODES_GSA"; do
  if exists gcloud iam service-accounts describe "$account" "${P[@]}"; then
    gcloud iam service-accounts delete "$account" --quiet "${P[@]}"
  fi
done

kept+=("the project $PROJECT and its enabled APIs (they cost nothing unused)")
kept+=("in AWS: the SQS queues and the IAM user tqflow-sqs (deployments/gke/README.md, step 9, deletes them)")
kept+=("on this machine: the Prefect profile lab and ~/.cloudvolume/secrets")
printf '\nDone. Kept:\n'
printf '  - %s\n' "${kept[@]}"
