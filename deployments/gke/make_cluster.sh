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
#   NAMESPACE       Kubernetes namespace of the Prefect worker     (default tqflow)
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
POOL=tqflow-workers   # the work pool's default node_selector targets this name

gcloud config set project "$PROJECT"

# System pool: the Prefect worker and GKE's own pods. Workload Identity lets pods act as a
# Google service account without key files (see "Credentials" in README.md here).
gcloud container clusters create "$CLUSTER" \
  --region "$REGION" \
  --num-nodes 1 \
  --machine-type e2-standard-2 \
  --workload-pool "$PROJECT.svc.id.goog" \
  --logging=SYSTEM \
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

cat <<DONE
Cluster $CLUSTER is ready. Worker nodes: $MACHINE_TYPE, 0..$MAX_NODES per zone, spot=$SPOT.
The worker pool is tainted tqflow-worker=true:NoSchedule; the work pool's default tolerations
include it. Next: deployments/gke/README.md, "Start the Prefect worker".
DONE
