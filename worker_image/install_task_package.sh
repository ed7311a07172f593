#!/bin/sh
# Installs the package of your task functions into tqflow's environment under the versions
# uv.lock pins (the ones the tests ran): a task package that needs another version of a locked
# package stops the build, naming both, instead of replacing it in silence.
#
#   worker_image/install_task_package.sh REQUIREMENT [uv pip install options...]
#
# REQUIREMENT is a pip requirement (a name, a git URL, a path); empty installs nothing. The
# Dockerfile runs it with the TASK_PACKAGE build argument.
set -eu
cd "$(dirname "$0")/.."
requirement=${1:-}
[ -n "$requirement" ] || exit 0
shift
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
uv export --locked --no-emit-project --no-hashes --format requirements-txt --quiet \
  --output-file "$constraints"
if ! uv pip install --python "${UV_PROJECT_ENVIRONMENT:-.venv}/bin/python" \
  --constraint "$constraints" "$@" "$requirement"; then
  echo "install_task_package.sh: $requirement needs a version other than tqflow's uv.lock pins" \
    "(uv says which, above). Pin your package to versions the lock has, or move the lock to" \
    "yours (uv lock --upgrade-package NAME, then make test) and build again." >&2
  exit 1
fi
