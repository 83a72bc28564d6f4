#!/bin/sh
# Build the statecast image from a small context: the package sources (src/) and the
# shipped models (app/models: manifest.json, onnx/, tokenizer/), never .venv or data.
#   deploy/docker/build.sh <tag>
# Environment: ENGINE (docker|podman, default docker), FLAVOR (cpu|gpu), BASE_IMAGE,
# CA_BUNDLE (a host CA bundle for pip behind a TLS-inspecting proxy; build stage only),
# BUILD_NETWORK (e.g. host, where the engine has no bridge network).
set -eu
tag=${1:?usage: build.sh <tag>}
root=$(cd "$(dirname "$0")/../.." && pwd)
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/src" "$ctx/app/models"
cd "$root"
cp pyproject.toml README.md "$ctx/src/"
# Python sources only: the packages also hold checkpoints, data and ONNX files. -L follows
# statecast/<name>, the links to the top-level folders, so the context holds real files.
find -L statecast \( -name '*.py' -o -name py.typed \) -type f 2>/dev/null |
  tar -c -T - | tar -C "$ctx/src" -x
for art in models/manifest.json models/onnx models/tokenizer; do
  if [ -e "$art" ]; then cp -r "$art" "$ctx/app/models/"; fi
done
set --
if [ -n "${CA_BUNDLE:-}" ]; then
  cp "$CA_BUNDLE" "$ctx/src/ca.crt"
  set -- --build-arg CA_BUNDLE=ca.crt
fi
if [ -n "${BASE_IMAGE:-}" ]; then set -- "$@" --build-arg "BASE_IMAGE=$BASE_IMAGE"; fi
if [ -n "${BUILD_NETWORK:-}" ]; then set -- "$@" --network "$BUILD_NETWORK"; fi
cp deploy/docker/Dockerfile "$ctx/Dockerfile"
"${ENGINE:-docker}" build "$@" --build-arg "FLAVOR=${FLAVOR:-cpu}" -t "$tag" "$ctx"
