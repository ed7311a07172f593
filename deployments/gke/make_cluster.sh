#!/usr/bin/env bash
# A GKE cluster for tqflow, from an empty Google Cloud project: the APIs, a node service account
# with the least roles nodes need, a small on-demand system pool, an autoscaling worker pool
# (spot by default) that scales to zero between batches, the tqflow namespace, Workload
# Identity for the Jobs, the bucket, and an Artifact Registry repository for the worker image.
# Node upgrades wait for a weekend maintenance window (MAINTENANCE_*), never in the middle of a
# working week's batch.
#
#   PROJECT=my-project REGION=us-west1 BUCKET=my-lab-tqflow ./deployments/gke/make_cluster.sh
#
# Every step looks first and creates only what is missing: run it again after a failure (or to
# add the bucket) and it goes on where it stopped. Run again with other MACHINE_TYPE, MAX_NODES
# or DISK_SIZE_GB, it changes the worker pool to them (SPOT cannot change in place: it says what
# to run).
#
# Settings (environment):
#   PROJECT         Google Cloud project (required)
#   REGION          region of the cluster, the bucket and the repository  (default us-west1)
#   CLUSTER         cluster name                                         (default tqflow)
#   MACHINE_TYPE    worker node machine type                             (default e2-highmem-4)
#   MAX_NODES       most worker nodes per zone                           (default 10)
#   SPOT            1: spot VMs (cheap, preemptible), 0: on-demand       (default 1)
#   NAMESPACE       Kubernetes namespace of the Prefect worker and Jobs  (default tqflow)
#   BUCKET          GCS bucket the workers write, without gs://          (optional)
#   REPOSITORY      Artifact Registry repository of the worker image     (default tqflow)
#   WORKERS         workers of your largest batch, for the quota check  (default 100)
#   PODS_PER_NODE   worker processes per node (tqflow plan-resources)   (default 4)
#   DISK_SIZE_GB    boot disk of a worker node, pd-balanced              (default 50)
#   QUOTA_CHECK     0: create even where the quota is short              (default 1)
#   MAINTENANCE_START, MAINTENANCE_END, MAINTENANCE_RECURRENCE: when GKE may upgrade the nodes
#                   (default Saturday and Sunday, 00:00-08:00 UTC)
set -euo pipefail

# -- prerequisites, all checked before anything is changed --------------------------------------
missing=()
need() {  # need COMMAND HOW-TO-INSTALL
  command -v "$1" >/dev/null 2>&1 || missing+=("$1: $2")
}
need gcloud "install the Google Cloud CLI: https://cloud.google.com/sdk/docs/install, then gcloud auth login"
need kubectl "gcloud components install kubectl (or apt-get install kubectl from Google's apt repository)"
need gke-gcloud-auth-plugin "gcloud components install gke-gcloud-auth-plugin (or apt-get install google-cloud-cli-gke-gcloud-auth-plugin)"
# Not used here, but the guide's next steps are: better known now than after the cluster is up.
need helm "https://helm.sh/docs/intro/install/ (the Prefect server and worker charts)"
if ((${#missing[@]})); then
  printf 'make_cluster.sh: missing, so nothing was changed:\n' >&2
  printf '  %s\n' "${missing[@]}" >&2
  exit 2
fi

: "${PROJECT:?set PROJECT to your Google Cloud project}"
REGION=${REGION:-us-west1}
CLUSTER=${CLUSTER:-tqflow}
MACHINE_TYPE=${MACHINE_TYPE:-e2-highmem-4}
MAX_NODES=${MAX_NODES:-10}
SPOT=${SPOT:-1}
NAMESPACE=${NAMESPACE:-tqflow}
BUCKET=${BUCKET:-}
BUCKET=${BUCKET#gs://}
REPOSITORY=${REPOSITORY:-tqflow}
WORKERS=${WORKERS:-100}
PODS_PER_NODE=${PODS_PER_NODE:-4}
DISK_SIZE_GB=${DISK_SIZE_GB:-50}
QUOTA_CHECK=${QUOTA_CHECK:-1}
# GKE wants at least 48 hours of maintenance in any 32 days: two 8-hour days a week give ~70.
MAINTENANCE_START=${MAINTENANCE_START:-2000-01-01T00:00:00Z}
MAINTENANCE_END=${MAINTENANCE_END:-2000-01-01T08:00:00Z}
MAINTENANCE_RECURRENCE=${MAINTENANCE_RECURRENCE:-FREQ=WEEKLY;BYDAY=SA,SU}
POOL=tqflow-workers  # the work pool's default node_selector targets this name
JOBS_KSA=tqflow-jobs # the work pool's default service_account_name
NODES_GSA=tqflow-nodes@$PROJECT.iam.gserviceaccount.com
P=(--project "$PROJECT")

exists() { "$@" >/dev/null 2>&1; }  # exists DESCRIBE-COMMAND...: whether it finds the thing
say() { printf '== %s\n' "$*"; }

# -- the project ------------------------------------------------------------------------------------
# Enabling an API fails on a project without a billing account, with a message about the API.
say "billing of $PROJECT"
billing=$(gcloud billing projects describe "$PROJECT" --format 'value(billingEnabled)' 2>/dev/null) ||
  billing=unknown
case "$billing" in
True) ;;
False)
  printf 'make_cluster.sh: project %s has no billing account, so nothing was changed. Link one:\n' \
    "$PROJECT" >&2
  printf '  gcloud billing accounts list\n' >&2
  printf '  gcloud billing projects link %s --billing-account <ACCOUNT_ID from the list>\n' \
    "$PROJECT" >&2
  printf 'then run this again.\n' >&2
  exit 4
  ;;
*) printf '  could not read it (you may not see the billing account); going on\n' ;;
esac

say "APIs: Compute, GKE, Artifact Registry, IAM, Cloud Storage, Cloud Build (images without Docker)"
gcloud services enable compute.googleapis.com container.googleapis.com \
  artifactregistry.googleapis.com iam.googleapis.com storage.googleapis.com \
  cloudbuild.googleapis.com "${P[@]}"

# -- the project's quota, before anything is created ------------------------------------------------
# At the batch's peak: the worker nodes, and the system pool's 3 nodes (one e2-standard-4 a zone,
# 100 GB pd-balanced boot disks). Spot VMs count against PREEMPTIBLE_CPUS where the region grants
# it, else against CPUS; every node with a public IP holds one of IN_USE_ADDRESSES.
cpus=${MACHINE_TYPE##*-}
nodes=$(((WORKERS + PODS_PER_NODE - 1) / PODS_PER_NODE))
say "quota in $REGION for $WORKERS workers: $nodes nodes of $cpus vCPUs, and 3 system nodes"
# (bash 3.2, macOS's own: no associative arrays, so one variable per metric)
while read -r metric max used; do
  case "$metric" in
  CPUS | PREEMPTIBLE_CPUS | SSD_TOTAL_GB | IN_USE_ADDRESSES)
    printf -v "limit_$metric" '%s' "${max%.*}"
    printf -v "usage_$metric" '%s' "${used%.*}"
    ;;
  esac
done < <(gcloud compute regions describe "$REGION" --flatten quotas \
  --format 'value(quotas.metric,quotas.limit,quotas.usage)' "${P[@]}" || true)
need_CPUS=12 need_PREEMPTIBLE_CPUS="" need_SSD_TOTAL_GB=$((300 + nodes * DISK_SIZE_GB))
need_IN_USE_ADDRESSES=$((3 + nodes))
if [[ "$SPOT" == "1" && "${limit_PREEMPTIBLE_CPUS:-0}" -gt 0 ]]; then
  need_PREEMPTIBLE_CPUS=$((nodes * cpus))
else
  need_CPUS=$((12 + nodes * cpus))
fi
short=()
for metric in CPUS PREEMPTIBLE_CPUS SSD_TOTAL_GB IN_USE_ADDRESSES; do
  needed="need_$metric" limited="limit_$metric" used="usage_$metric"
  [[ -n "${!needed}" ]] || continue
  if [[ -z "${!limited:-}" ]]; then
    printf '  %-18s needs %6s   (the project did not say)\n' "$metric" "${!needed}"
    continue
  fi
  printf '  %-18s needs %6s   limit %6s   in use %6s\n' "$metric" "${!needed}" "${!limited}" \
    "${!used}"
  if ((${!limited} < ${!needed})); then short+=("$metric"); fi
done
if ((${#short[@]})); then
  printf '\nmake_cluster.sh: the quota in %s is short of what %s workers need: %s.\n' \
    "$REGION" "$WORKERS" "${short[*]}" >&2
  printf 'Raise each to at least its need above (IAM & Admin > Quotas, filtered by metric and region:\n' >&2
  printf '  https://console.cloud.google.com/iam-admin/quotas?project=%s), or set fewer WORKERS,\n' "$PROJECT" >&2
  printf 'a smaller MACHINE_TYPE or DISK_SIZE_GB. QUOTA_CHECK=0 creates the cluster anyway; it then\n' >&2
  printf 'grows only as far as the quota lets it.\n' >&2
  if [[ "$QUOTA_CHECK" != "0" ]]; then exit 3; fi
fi

say "node service account $NODES_GSA: logs, metrics, and pulling the worker image"
exists gcloud iam service-accounts describe "$NODES_GSA" "${P[@]}" ||
  gcloud iam service-accounts create tqflow-nodes --display-name "tqflow GKE nodes" "${P[@]}"
for role in roles/container.defaultNodeServiceAccount roles/artifactregistry.reader; do
  gcloud projects add-iam-policy-binding "$PROJECT" --member "serviceAccount:$NODES_GSA" \
    --role "$role" --condition None --format none
done

# -- the cluster ------------------------------------------------------------------------------------
# System pool (on-demand): the Prefect worker, the orchestrating runs (pipeline, analysis,
# dead-letters: 5Gi each, see prefect.yaml) and GKE's own pods. Workload Identity lets pods act
# as a Google service account without key files. WORKLOAD logging keeps pod stdout in Cloud
# Logging (SYSTEM alone drops it); the worker image turns progress bars off. The regular release
# channel upgrades nodes by itself: only inside the maintenance window, so an upgrade does not
# restart the Prefect server or drain the nodes in the middle of the week's batches.
say "cluster $CLUSTER in $REGION (node upgrades: $MAINTENANCE_RECURRENCE, from $MAINTENANCE_START to $MAINTENANCE_END)"
window=(--maintenance-window-start "$MAINTENANCE_START" --maintenance-window-end "$MAINTENANCE_END"
  --maintenance-window-recurrence "$MAINTENANCE_RECURRENCE")
if exists gcloud container clusters describe "$CLUSTER" --region "$REGION" "${P[@]}"; then
  gcloud container clusters update "$CLUSTER" --region "$REGION" "${window[@]}" "${P[@]}"
else
  gcloud container clusters create "$CLUSTER" \
    --region "$REGION" \
    --num-nodes 1 \
    --machine-type e2-standard-4 \
    --service-account "$NODES_GSA" \
    --workload-pool "$PROJECT.svc.id.goog" \
    --release-channel regular \
    "${window[@]}" \
    --logging SYSTEM,WORKLOAD \
    --monitoring SYSTEM \
    "${P[@]}"
fi

# Worker pool: only tqflow workers run here (the taint keeps other pods off), from 0 nodes.
say "worker pool $POOL: $MACHINE_TYPE, 0 to $MAX_NODES nodes a zone, spot=$SPOT"
spot_flags=()
if [[ "$SPOT" == "1" ]]; then
  spot_flags=(--spot) # GKE taints spot nodes cloud.google.com/gke-spot=true:NoSchedule itself
fi
on_pool=(--cluster "$CLUSTER" --region "$REGION" "${P[@]}")
if pool=$(gcloud container node-pools describe "$POOL" "${on_pool[@]}" \
  --format 'value(config.machineType,config.diskSizeGb,config.spot.yesno(yes=True,no=False),autoscaling.maxNodeCount)' \
  2>/dev/null); then
  # It exists: bring it to this run's settings (a pool at zero nodes changes at once; nodes that
  # run are replaced one by one, and the pipeline replaces the workers they held).
  read -r has_type has_disk has_spot has_max <<<"$pool"
  want_spot=False
  if [[ "$SPOT" == "1" ]]; then want_spot=True; fi
  if [[ "$has_spot" != "$want_spot" ]]; then
    printf 'make_cluster.sh: worker pool %s has spot=%s, and spot cannot change in place. When no\n' \
      "$POOL" "$has_spot" >&2
    printf 'batch is running, delete the pool and run this again to create it with SPOT=%s:\n' "$SPOT" >&2
    printf '  gcloud container node-pools delete %s --cluster %s --region %s --project %s\n' \
      "$POOL" "$CLUSTER" "$REGION" "$PROJECT" >&2
    exit 4
  fi
  if [[ "$has_type" != "$MACHINE_TYPE" ]]; then
    say "worker pool $POOL: machine type $has_type -> $MACHINE_TYPE"
    gcloud container node-pools update "$POOL" "${on_pool[@]}" --machine-type "$MACHINE_TYPE"
  fi
  if [[ "$has_disk" != "$DISK_SIZE_GB" ]]; then
    say "worker pool $POOL: boot disk ${has_disk} GB -> ${DISK_SIZE_GB} GB"
    gcloud container node-pools update "$POOL" "${on_pool[@]}" --disk-type pd-balanced \
      --disk-size "$DISK_SIZE_GB"
  fi
  if [[ "$has_max" != "$MAX_NODES" ]]; then
    say "worker pool $POOL: at most $has_max -> $MAX_NODES nodes a zone"
    gcloud container node-pools update "$POOL" "${on_pool[@]}" \
      --enable-autoscaling --min-nodes 0 --max-nodes "$MAX_NODES"
  fi
else
  gcloud container node-pools create "$POOL" \
    --cluster "$CLUSTER" \
    --region "$REGION" \
    --machine-type "$MACHINE_TYPE" \
    --service-account "$NODES_GSA" \
    --enable-autoscaling --min-nodes 0 --max-nodes "$MAX_NODES" --num-nodes 0 \
    --disk-type pd-balanced --disk-size "$DISK_SIZE_GB" \
    --node-taints tqflow-worker=true:NoSchedule \
    --workload-metadata GKE_METADATA \
    "${spot_flags[@]}" \
    "${P[@]}"
fi

gcloud container clusters get-credentials "$CLUSTER" --region "$REGION" "${P[@]}"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -

# -- what the worker Jobs run as: Workload Identity, the bucket -----------------------------------
# The bucket's role goes to the Kubernetes service account itself (Workload Identity Federation's
# principal): no Google service account to impersonate, and no key file anywhere.
say "Jobs' service account: $NAMESPACE/$JOBS_KSA, by Workload Identity"
kubectl create serviceaccount "$JOBS_KSA" --namespace "$NAMESPACE" --dry-run=client -o yaml |
  kubectl apply -f -
project_number=$(gcloud projects describe "$PROJECT" --format 'value(projectNumber)')
JOBS_PRINCIPAL="principal://iam.googleapis.com/projects/$project_number/locations/global/workloadIdentityPools/$PROJECT.svc.id.goog/subject/ns/$NAMESPACE/sa/$JOBS_KSA"

if [[ -n "$BUCKET" ]]; then
  say "bucket gs://$BUCKET: the Jobs may write it"
  exists gcloud storage buckets describe "gs://$BUCKET" "${P[@]}" ||
    gcloud storage buckets create "gs://$BUCKET" --location "$REGION" \
      --uniform-bucket-level-access --public-access-prevention "${P[@]}"
  gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" \
    --member "$JOBS_PRINCIPAL" --role roles/storage.objectAdmin --format none "${P[@]}"
fi

# -- the worker image's home ---------------------------------------------------------------------
say "Artifact Registry repository $REGION-docker.pkg.dev/$PROJECT/$REPOSITORY"
exists gcloud artifacts repositories describe "$REPOSITORY" --location "$REGION" "${P[@]}" ||
  gcloud artifacts repositories create "$REPOSITORY" --repository-format docker \
    --location "$REGION" "${P[@]}"

cat <<DONE

Cluster $CLUSTER is ready. Worker nodes: $MACHINE_TYPE, 0..$MAX_NODES per zone, spot=$SPOT, tainted
tqflow-worker=true:NoSchedule (the work pool's default tolerations include it). Jobs run in
namespace $NAMESPACE as $JOBS_KSA (Workload Identity: the bucket's role is granted to it).
Node upgrades: only $MAINTENANCE_RECURRENCE from ${MAINTENANCE_START#*T} to ${MAINTENANCE_END#*T}.
Image repository: $REGION-docker.pkg.dev/$PROJECT/$REPOSITORY.

Quota: $WORKERS workers at $PODS_PER_NODE per node are $nodes nodes of $cpus vCPUs (checked above;
MAX_NODES=$MAX_NODES per zone caps the pool). What the project has, at any time:
  gcloud compute regions describe $REGION --project $PROJECT --flatten quotas \\
    --format 'table(quotas.metric,quotas.limit,quotas.usage)'
Next: deployments/gke/README.md, "3. The Prefect server".
DONE
