#!/usr/bin/env bash
# Create a GKE cluster for tqflow: a small system pool, and an autoscaling worker pool (spot by
# default) that scales to zero between batches.
#
#   PROJECT=my-project REGION=us-west1 ./make_cluster.sh
#
# Settings (environment):
#   PROJECT         GCP project (required)
#   REGION          region of the cluster                          (default us-west1)
#   CLUSTER         cluster name                                   (default tqflow)
#   MACHINE_TYPE    worker node machine type                       (default e2-standard-4)
#   MAX_NODES       most worker nodes per zone                     (default 10)
#   SPOT            1: spot VMs (cheap, preemptible), 0: on-demand (default 1)
#   NAMESPACE       Kubernetes namespace of the worker and Jobs    (default tqflow)
#   BUCKET          GCS bucket the workers write (gs://...), for Workload Identity (optional)
#   REPOSITORY      Artifact Registry repository of the worker image  (default tqflow)
#
# Size the worker pods for MACHINE_TYPE with:
#   tqflow plan-resources --machine-type "$MACHINE_TYPE" --pods-per-node 4
set -euo pipefail

: "${PROJECT:?set PROJECT to your GCP project}"
REGION=${REGION:-us-west1}
CLUSTER=${CLUSTER:-tqflow}
MACHINE_TYPE=${MACHINE_TYPE:-e2-standard-4}
MAX_NODES=${MAX_NODES:-10}
SPOT=${SPOT:-1}
NAMESPACE=${NAMESPACE:-tqflow}
BUCKET=${BUCKET:-}
REPOSITORY=${REPOSITORY:-tqflow}
POOL=tqflow-workers   # the work pool's default node_selector targets this name
JOBS_KSA=tqflow-jobs  # the work pool's default service_account_name
JOBS_GSA=tqflow-jobs@$PROJECT.iam.gserviceaccount.com

gcloud config set project "$PROJECT"

# System pool (on-demand): the Prefect worker, the orchestrating runs (pipeline, analysis,
# dead-letters: 5Gi each, see prefect.yaml) and GKE's own pods. Workload Identity lets pods act
# as a Google service account without key files. WORKLOAD logging keeps pod stdout in Cloud
# Logging (SYSTEM alone drops it); the worker image turns progress bars off.
gcloud container clusters create "$CLUSTER" \
  --region "$REGION" \
  --num-nodes 1 \
  --machine-type e2-standard-4 \
  --workload-pool "$PROJECT.svc.id.goog" \
  --logging=SYSTEM,WORKLOAD \
  --monitoring=SYSTEM

# Worker pool: only tqflow workers run here (the taint keeps other pods off), from 0 nodes.
spot_flags=()
if [[ "$SPOT" == "1" ]]; then
  spot_flags=(--spot)   # GKE taints spot nodes cloud.google.com/gke-spot=true:NoSchedule itself
fi
gcloud container node-pools create "$POOL" \
  --cluster "$CLUSTER" \
  --region "$REGION" \
  --machine-type "$MACHINE_TYPE" \
  --enable-autoscaling --min-nodes 0 --max-nodes "$MAX_NODES" --num-nodes 0 \
  --node-taints tqflow-worker=true:NoSchedule \
  --workload-metadata GKE_METADATA \
  "${spot_flags[@]}"

gcloud container clusters get-credentials "$CLUSTER" --region "$REGION"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -

# Workload Identity for the Jobs: the Kubernetes service account tqflow-jobs acts as the Google
# service account tqflow-jobs@, which may write the bucket. Then a storage block needs no key.
gcloud iam service-accounts describe "$JOBS_GSA" >/dev/null 2>&1 ||
  gcloud iam service-accounts create tqflow-jobs --display-name "tqflow worker Jobs"
gcloud iam service-accounts add-iam-policy-binding "$JOBS_GSA" \
  --role roles/iam.workloadIdentityUser \
  --member "serviceAccount:$PROJECT.svc.id.goog[$NAMESPACE/$JOBS_KSA]"
if [[ -n "$BUCKET" ]]; then
  gcloud storage buckets add-iam-policy-binding "$BUCKET" \
    --member "serviceAccount:$JOBS_GSA" --role roles/storage.objectAdmin
fi
kubectl create serviceaccount "$JOBS_KSA" --namespace "$NAMESPACE" --dry-run=client -o yaml |
  kubectl apply -f -
kubectl annotate serviceaccount "$JOBS_KSA" --namespace "$NAMESPACE" --overwrite \
  "iam.gke.io/gcp-service-account=$JOBS_GSA"

# Artifact Registry for the worker image (deployments/gke/build_image.sh pushes there).
gcloud artifacts repositories describe "$REPOSITORY" --location "$REGION" >/dev/null 2>&1 ||
  gcloud artifacts repositories create "$REPOSITORY" --repository-format docker --location "$REGION"
gcloud auth configure-docker "$REGION-docker.pkg.dev" --quiet

cat <<DONE
Cluster $CLUSTER is ready. Worker nodes: $MACHINE_TYPE, 0..$MAX_NODES per zone, spot=$SPOT.
The worker pool is tainted tqflow-worker=true:NoSchedule; the work pool's default tolerations
include it. Jobs run in namespace $NAMESPACE as $JOBS_KSA (Workload Identity: $JOBS_GSA).
Image repository: $REGION-docker.pkg.dev/$PROJECT/$REPOSITORY.
Next: deployments/gke/README.md, "3. Work pool and Prefect worker".
DONE
