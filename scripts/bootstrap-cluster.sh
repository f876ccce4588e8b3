#!/usr/bin/env bash
# A local cluster for the demo: minikube (preferred) or kind, with the proxy-telemetry image
# built into it. Then: ./deploy.sh --demo
#
#   scripts/bootstrap-cluster.sh            # minikube if installed, else kind
#   scripts/bootstrap-cluster.sh kind
set -euo pipefail
cd "$(dirname "$0")/.."

tool="${1:-}"
if [[ -z "$tool" ]]; then
  if command -v minikube >/dev/null; then tool=minikube
  elif command -v kind >/dev/null; then tool=kind
  else echo "install minikube (https://minikube.sigs.k8s.io) or kind (https://kind.sigs.k8s.io)" >&2; exit 1
  fi
fi
version=$(awk -F'"' '/^appVersion:/{print $2}' deploy/helm/proxy-telemetry/Chart.yaml)
image="ghcr.io/proxy-telemetry/proxy-telemetry:${version}"

case "$tool" in
  minikube)
    # Native sidecars need Kubernetes >= 1.29; NetworkPolicies need a CNI that enforces them.
    minikube status >/dev/null 2>&1 || minikube start --cpus 4 --memory 8g --kubernetes-version v1.30.0 --cni calico
    echo "building $image inside minikube"
    minikube image build -t "$image" .
    ;;
  kind)
    kind get clusters | grep -qx proxy-telemetry || kind create cluster --name proxy-telemetry --image kindest/node:v1.30.0
    command -v docker >/dev/null || { echo "kind needs docker to build the image" >&2; exit 1; }
    docker build -t "$image" .
    kind load docker-image "$image" --name proxy-telemetry
    ;;
  *) echo "unknown tool: $tool (minikube or kind)" >&2; exit 64 ;;
esac
echo "cluster ready; now run: ./deploy.sh --demo"
