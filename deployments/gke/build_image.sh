#!/usr/bin/env bash
# Build the worker image (worker_image/Dockerfile) and push it under a tag used once, then print
# on stdout the line that exports the digest-pinned reference to deploy with, and the tag (the
# Prefect server's chart takes an image by repository and tag); all else goes to stderr. A fixed
# tag with imagePullPolicy IfNotPresent would keep old code on nodes that pulled it before; a
# digest cannot.
#
#   eval "$(REPOSITORY=us-west1-docker.pkg.dev/my-project/tqflow \
#     TASK_PACKAGE="git+https://github.com/my-lab/neuron-tasks@v1.2" ./deployments/gke/build_image.sh)"
#
# Settings (environment):
#   REPOSITORY    registry path of the image, without the name         (required)
#   TASK_PACKAGE  pip requirement of your task functions               (default: none)
#   TAG           image tag                          (default: <git commit>-<UTC time>)
#   BUILDER       docker (buildx, here) or cloud-build (Google Cloud Build, deployments/gke/
#                 cloudbuild.yaml)          (default: docker if buildx is here, else cloud-build)
set -euo pipefail
cd "$(dirname "$0")/../.."

: "${REPOSITORY:?set REPOSITORY, e.g. us-west1-docker.pkg.dev/my-project/tqflow}"
TASK_PACKAGE=${TASK_PACKAGE:-}
TAG=${TAG:-$(git rev-parse --short HEAD 2>/dev/null || echo local)-$(date -u +%Y%m%d%H%M%S)}
IMAGE="$REPOSITORY/worker:$TAG"

if [[ -z "${BUILDER:-}" ]]; then
  BUILDER=cloud-build
  if command -v docker >/dev/null 2>&1 && docker buildx version >/dev/null 2>&1; then
    BUILDER=docker
  fi
fi

case "$BUILDER" in
docker)
  docker buildx build --platform linux/amd64 -f worker_image/Dockerfile \
    --build-arg TASK_PACKAGE="$TASK_PACKAGE" -t "$IMAGE" --push . >&2
  digest=$(docker buildx imagetools inspect "$IMAGE" --format '{{json .Manifest.Digest}}' | tr -d '"')
  ;;
cloud-build)
  if ! command -v gcloud >/dev/null 2>&1; then
    echo "build_image.sh: needs Docker with buildx (https://docs.docker.com/build/install-buildx/)" \
      "or gcloud for Cloud Build; neither is here" >&2
    exit 2
  fi
  case "$TASK_PACKAGE" in *,*)
    echo "build_image.sh: Cloud Build's substitutions cannot hold a comma (TASK_PACKAGE=$TASK_PACKAGE):" \
      "name the package without one, or build with Docker" >&2
    exit 2
    ;;
  esac
  echo "building $IMAGE with Cloud Build (no docker buildx here)" >&2
  gcloud builds submit --config deployments/gke/cloudbuild.yaml \
    --substitutions "_IMAGE=$IMAGE,_TASK_PACKAGE=$TASK_PACKAGE" . >&2
  digest=$(gcloud artifacts docker images describe "$IMAGE" --format 'value(image_summary.digest)')
  ;;
*)
  echo "build_image.sh: BUILDER=$BUILDER: give docker or cloud-build" >&2
  exit 2
  ;;
esac
echo "pushed $IMAGE ($digest); in another terminal:" >&2
echo "  export TQFLOW_IMAGE=$REPOSITORY/worker@$digest TQFLOW_IMAGE_TAG=$TAG" >&2
echo "export TQFLOW_IMAGE=$REPOSITORY/worker@$digest TQFLOW_IMAGE_TAG=$TAG"
