#!/usr/bin/env bash
# Build the worker image (worker_image/Dockerfile) and push it under a tag used once, then print
# the digest-pinned reference to deploy with, and the tag (the Prefect server's chart takes an
# image by repository and tag). A fixed tag with imagePullPolicy IfNotPresent would keep old code
# on nodes that pulled it before; a digest cannot.
#
#   REPOSITORY=us-west1-docker.pkg.dev/my-project/tqflow \
#   TASK_PACKAGE="git+https://github.com/my-lab/neuron-tasks@v1.2" \
#     ./deployments/gke/build_image.sh
#   export TQFLOW_IMAGE=<the printed reference> TQFLOW_IMAGE_TAG=<the printed tag>
#
# Settings (environment):
#   REPOSITORY    registry path of the image, without the name         (required)
#   TASK_PACKAGE  pip requirement of your task functions               (default: none)
#   TAG           image tag                          (default: <git commit>-<UTC time>)
#
# Without Docker: build the same Dockerfile with Cloud Build or CI, push it, and set
# TQFLOW_IMAGE to its digest-pinned reference (…/worker@sha256:…).
set -euo pipefail
cd "$(dirname "$0")/../.."

: "${REPOSITORY:?set REPOSITORY, e.g. us-west1-docker.pkg.dev/my-project/tqflow}"
TASK_PACKAGE=${TASK_PACKAGE:-}
TAG=${TAG:-$(git rev-parse --short HEAD 2>/dev/null || echo local)-$(date -u +%Y%m%d%H%M%S)}
IMAGE="$REPOSITORY/worker:$TAG"

if ! docker buildx version >/dev/null 2>&1; then
  echo "build_image.sh: needs Docker with buildx (https://docs.docker.com/build/install-buildx/);" \
    "or build worker_image/Dockerfile with Cloud Build: gcloud builds submit --tag $IMAGE" >&2
  exit 2
fi

docker buildx build --platform linux/amd64 -f worker_image/Dockerfile \
  --build-arg TASK_PACKAGE="$TASK_PACKAGE" -t "$IMAGE" --push .
digest=$(docker buildx imagetools inspect "$IMAGE" --format '{{json .Manifest.Digest}}' | tr -d '"')
echo "pushed $IMAGE"
echo "export TQFLOW_IMAGE=$REPOSITORY/worker@$digest TQFLOW_IMAGE_TAG=$TAG"
