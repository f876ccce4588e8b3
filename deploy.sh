#!/usr/bin/env bash
# Installs or upgrades proxy-telemetry with Helm: one command, safe to run again.
#
#   ./deploy.sh                      # production install from your values (see docs/deployment.md)
#   ./deploy.sh --demo               # the whole demo in a cluster (stand-in vendors and origins)
#   ./deploy.sh -f my-values.yaml -n monitoring --release proxy-telemetry
set -euo pipefail
cd "$(dirname "$0")"

namespace=monitoring
release=proxy-telemetry
values=()
demo=false
while (($#)); do
  case "$1" in
    --demo) demo=true ;;
    -n|--namespace) namespace="$2"; shift ;;
    --release) release="$2"; shift ;;
    -f|--values) values+=(-f "$2"); shift ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

command -v helm >/dev/null || die "helm 3 is required: https://helm.sh/docs/intro/install/"
command -v kubectl >/dev/null || die "kubectl is required"
kubectl version >/dev/null 2>&1 || die "no cluster reachable with the current kubeconfig (try scripts/bootstrap-cluster.sh)"

chart=deploy/helm/proxy-telemetry
if $demo; then
  values=(-f "$chart/ci/demo-values.yaml" "${values[@]}")
  say "Demo install: stand-in vendors and origins, crawlers with meter sidecars, Prometheus and Grafana"
else
  secret=$(helm show values "$chart" | awk '/^credentials:/{f=1} f && /secretName:/{print $2; exit}')
  for v in "${values[@]}"; do
    [[ "$v" == -f ]] && continue
    s=$(awk '/^credentials:/{f=1} f && /secretName:/{print $2; exit}' "$v" 2>/dev/null || true)
    [[ -n "$s" ]] && secret="$s"
  done
  if ! kubectl -n "$namespace" get secret "$secret" >/dev/null 2>&1; then
    echo "The vendor credentials Secret '$secret' does not exist in namespace '$namespace'. Create it, e.g.:"
    echo "  kubectl create namespace $namespace --dry-run=client -o yaml | kubectl apply -f -"
    echo "  kubectl -n $namespace create secret generic $secret --from-literal=vendor-a-password=... --from-literal=vendor-b-password=..."
    die "missing vendor credentials"
  fi
fi

say "helm upgrade --install $release ($chart) in namespace $namespace"
helm upgrade --install "$release" "$chart" --namespace "$namespace" --create-namespace \
  "${values[@]}" --wait --timeout 10m

say "Installed. Next steps:"
helm status "$release" --namespace "$namespace" --show-desc | sed -n '/NOTES:/,$p'
