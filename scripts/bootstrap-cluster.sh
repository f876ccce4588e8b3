#!/usr/bin/env bash
# A local cluster for the demo: minikube (preferred) or kind, with both images loaded into it
# under the names the chart pulls: ghcr.io/proxy-telemetry/proxy-telemetry:<appVersion> (meter,
# injector, load generators) and ghcr.io/proxy-telemetry/proxy-telemetry-init:<appVersion> (the
# init container the injector adds; without it injected pods hang in Init:ErrImagePull). Then:
# ./deploy.sh --demo
#
#   scripts/bootstrap-cluster.sh            # minikube if installed, else kind
#   scripts/bootstrap-cluster.sh kind
#
# The images are built with Docker from the Dockerfile when `docker` is installed, otherwise on
# Linux with scripts/build-images.sh (podman, no Docker engine), otherwise inside minikube.
set -euo pipefail
cd "$(dirname "$0")/.."

tool="${1:-}"
if [[ -z "$tool" ]]; then
  if command -v minikube >/dev/null; then tool=minikube
  elif command -v kind >/dev/null; then tool=kind
  else echo "install minikube (https://minikube.sigs.k8s.io) or kind (https://kind.sigs.k8s.io)" >&2; exit 1
  fi
fi
case "$tool" in minikube|kind) ;; *) echo "unknown tool: $tool (minikube or kind)" >&2; exit 64 ;; esac

registry=ghcr.io/proxy-telemetry
version=$(awk -F'"' '/^appVersion:/{print $2}' deploy/helm/proxy-telemetry/Chart.yaml)
meter="$registry/proxy-telemetry:${version}"
init="$registry/proxy-telemetry-init:${version}"

if command -v docker >/dev/null; then builder=docker
elif [[ "$(uname -s)" == Linux ]]; then builder=podman
elif [[ "$tool" == minikube ]]; then builder=minikube
else echo "kind needs docker to build the images (or Linux, for scripts/build-images.sh)" >&2; exit 1
fi

case "$tool" in
  minikube)
    # Native sidecars need Kubernetes >= 1.29; NetworkPolicies need a CNI that enforces them.
    minikube status >/dev/null 2>&1 || minikube start --cpus 4 --memory 8g --kubernetes-version v1.30.0 --cni calico
    ;;
  kind)
    provider=()
    # kind runs its node in podman when there is no docker.
    [[ "$builder" == podman ]] && provider=(env KIND_EXPERIMENTAL_PROVIDER=podman)
    "${provider[@]}" kind get clusters | grep -qx proxy-telemetry \
      || "${provider[@]}" kind create cluster --name proxy-telemetry --image kindest/node:v1.30.0
    ;;
esac

# load IMAGE ARCHIVE: the image into the cluster, from the local Docker or an image archive.
load() {
  case "$tool" in
    minikube) minikube image load "${2:-$1}" ;;
    kind) if [[ -n "${2:-}" ]]; then "${provider[@]}" kind load image-archive "$2" --name proxy-telemetry
          else kind load docker-image "$1" --name proxy-telemetry; fi ;;
  esac
}

case "$builder" in
  docker)
    echo "building $meter and $init with docker"
    docker build --target init -t "$init" .
    docker build --target meter -t "$meter" .
    load "$init"
    load "$meter"
    ;;
  podman)
    echo "building $meter and $init with scripts/build-images.sh"
    scripts/build-images.sh --registry "$registry"
    archives=$(mktemp -d)
    trap 'rm -rf "$archives"' EXIT
    for image in "$init" "$meter"; do
      archive="$archives/$(basename "${image%%:*}").tar"
      podman save --format docker-archive -o "$archive" "$image"
      load "$image" "$archive"
    done
    ;;
  minikube)
    echo "building $meter and $init inside minikube"
    minikube image build --build-opt=target=init -t "$init" .
    minikube image build --build-opt=target=meter -t "$meter" .
    ;;
esac
echo "cluster ready with $meter and $init; now run: ./deploy.sh --demo"
