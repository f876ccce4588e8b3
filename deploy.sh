#!/usr/bin/env bash
# Installs or upgrades proxy-telemetry with Helm: one command, safe to run again.
#
#   ./deploy.sh                      # production install from your values (see docs/deployment.md)
#   ./deploy.sh --demo               # the whole demo in a cluster (stand-in vendors and origins)
#   ./deploy.sh -f my-values.yaml -n monitoring --release proxy-telemetry
#
# Options, in helm's spellings (`--opt value`, `--opt=value`, `-f=file`, `-ffile`):
#   -f, --values FILE   values file, relative to the current directory; repeat it (or give
#                       a,b) for several, later files win; `-` reads stdin, <(...) works too
#   -n, --namespace NS  namespace of the release (default: monitoring)
#   --release NAME      release name (default: proxy-telemetry)
#   --demo              add the chart's ci/demo-values.yaml before your values files
#
# Needs helm 3 and kubectl.
set -euo pipefail
# Written for bash 3.2 (macOS) as well: no mapfile, and empty arrays are expanded as
# ${a[@]+"${a[@]}"}, which `set -u` accepts before bash 4.4.

script=${BASH_SOURCE[0]}
# The repository is where this script is; nothing below changes directory, so the paths the
# caller gives keep meaning what they mean in the caller's shell.
root=$(CDPATH='' cd -- "$(dirname -- "$script")" && pwd)
chart=$root/deploy/helm/proxy-telemetry

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
# Bad command lines exit 64 (EX_USAGE), as the meter does for bad config.
usage_error() { printf 'error: %s (see --help)\n' "$*" >&2; exit 64; }
usage() { awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$script"; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/deploy-sh.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

namespace=monitoring
release=proxy-telemetry
demo=false
values=()    # `-f PATH` pairs for helm: absolute paths (or URLs), in the order given
stdin_used=false

# Adds one -f argument. helm splits it at commas (a string-slice flag), so this does too. Each file
# is resolved against the caller's directory and must exist now: helm would otherwise fail only
# after the checks, or read a different file. A file that is not a regular file (stdin, a pipe from
# <(...)) is read once into $tmp, because both the values probe below and the install read it.
add_values() {
  local given=$1 parts f copy
  IFS=, read -r -a parts <<<"$given"
  ((${#parts[@]})) || usage_error "-f needs a file"
  for f in "${parts[@]}"; do
    [[ -n $f ]] || usage_error "empty values file name in '-f $given'"
    copy=$tmp/values-$((${#values[@]} / 2)).yaml
    if [[ $f == - ]]; then
      $stdin_used && usage_error "-f - (stdin) can be given once"
      stdin_used=true
      cat >"$copy"
      f=$copy
    elif [[ $f == *://* ]]; then
      : # a URL: helm fetches it
    else
      [[ $f == /* ]] || f=$PWD/${f#./}
      [[ -e $f ]] || usage_error "values file not found: $f"
      [[ -d $f ]] && usage_error "values file is a directory: $f"
      [[ -r $f ]] || usage_error "values file not readable: $f"
      if [[ ! -f $f ]]; then
        cat -- "$f" >"$copy"
        f=$copy
      fi
    fi
    values+=(-f "$f")
  done
}

while (($#)); do
  opt=$1
  shift
  value=
  attached=false
  case $opt in
    --*=*) value=${opt#*=}; opt=${opt%%=*}; attached=true ;;
    -[fn]=*) value=${opt:3}; opt=${opt:0:2}; attached=true ;;
    -[fn]?*) value=${opt:2}; opt=${opt:0:2}; attached=true ;;
  esac
  case $opt in
    -f|--values|-n|--namespace|--release)
      if ! $attached; then
        (($#)) || usage_error "$opt needs a value"
        value=$1
        shift
      fi
      [[ -n $value ]] || usage_error "$opt needs a non-empty value" ;;
    *) $attached && usage_error "$opt takes no value" ;;
  esac
  case $opt in
    --demo) demo=true ;;
    -n|--namespace) namespace=$value ;;
    --release) release=$value ;;
    -f|--values) add_values "$value" ;;
    -h|--help) usage; exit 0 ;;
    *) usage_error "unknown option: $opt" ;;
  esac
done

command -v helm >/dev/null || die "helm 3 is required: https://helm.sh/docs/intro/install/"
command -v kubectl >/dev/null || die "kubectl is required"
[[ -f $chart/Chart.yaml ]] || die "no chart at $chart: run deploy.sh from a checkout of the repository"

if $demo; then
  values=(-f "$chart/ci/demo-values.yaml" ${values[@]+"${values[@]}"})
  say "Demo install: stand-in vendors and origins, crawlers with meter sidecars, Prometheus and Grafana"
fi

# What the install will use for `credentials`. Helm itself reads the YAML and merges the chart's
# defaults with the values files, so quotes, flow style ({secretName: x}), comments, anchors and a
# later file overriding an earlier one mean exactly what they mean to `helm upgrade` (awk read
# `"name"` with its quotes, and a commented-out `# secretName:` as a value). The probe is a
# throwaway chart holding this chart's values.yaml and one template, rendered offline by
# `helm template` (no cluster). helm is needed anyway; python3 with PyYAML would be shorter but
# is not guaranteed where deploy.sh runs, and a shell YAML parser would never be complete.
probe=$tmp/probe
mkdir -p "$probe/templates"
printf 'apiVersion: v2\nname: deploy-sh-probe\nversion: 0.0.0\n' >"$probe/Chart.yaml"
cp "$chart/values.yaml" "$probe/values.yaml"
cat >"$probe/templates/credentials.yaml" <<'EOF'
{{- $credentials := .Values.credentials | default dict }}
apiVersion: v1
kind: ConfigMap
metadata:
  name: deploy-sh-probe
data:
  secretName: {{ $credentials.secretName | toJson }}
  createDemoSecret: {{ $credentials.createDemoSecret | toJson }}
  passwordKeys: "{{ range .Values.vendors }}{{ if .username }}{{ .passwordKey | default (printf "%s-password" .name) }} {{ end }}{{ end }}"
EOF
rendered=$(helm template deploy-sh-probe "$probe" ${values[@]+"${values[@]}"}) \
  || die "helm could not read the values files (its message is above)"
# toJson prints one line: a JSON string for a name, `null` when unset.
probed() { sed -n "s/^  $1: //p" <<<"$rendered"; }

secret_json=$(probed secretName)
# A Secret's name is a DNS subdomain: lower-case alphanumerics, '-' and '.', no JSON escapes.
name_re='^"([a-z0-9]([-a-z0-9.]*[a-z0-9])?)"$'
[[ $secret_json =~ $name_re ]] \
  || die "credentials.secretName is ${secret_json:-unset}: not a Secret name (lower-case letters, digits, '-' and '.')"
secret=${BASH_REMATCH[1]}

# An unreachable API server answers nothing: give up after this long rather than hang.
timeout=(--request-timeout=15s)
kubectl version "${timeout[@]}" >/dev/null 2>&1 || die "no cluster reachable with the current kubeconfig (try scripts/bootstrap-cluster.sh)"

if [[ $(probed createDemoSecret) == true ]]; then
  say "The chart creates the vendor credentials Secret $secret (credentials.createDemoSecret)"
elif ! failure=$(kubectl -n "$namespace" get secret "$secret" "${timeout[@]}" 2>&1 >/dev/null); then
  if [[ $failure == *NotFound* || $failure == *"not found"* ]]; then
    keys=$(probed passwordKeys | tr -d '"')
    {
      echo "The vendor credentials Secret \"$secret\" does not exist in namespace \"$namespace\". Create it, e.g.:"
      echo "  kubectl create namespace $namespace --dry-run=client -o yaml | kubectl apply -f -"
      printf '  kubectl -n %s create secret generic %s' "$namespace" "$secret"
      for key in $keys; do printf ' --from-literal=%s=...' "$key"; done
      echo
    } >&2
    die "missing vendor credentials: Secret $secret in namespace $namespace"
  fi
  # Forbidden (this user may not read Secrets), a timeout: the check cannot say, the install may
  # still be right. The meters will not start without the Secret.
  say "warning: could not check the Secret \"$secret\" in namespace \"$namespace\" ($failure); continuing" >&2
fi

say "helm upgrade --install $release ($chart) in namespace $namespace"
helm upgrade --install "$release" "$chart" --namespace "$namespace" --create-namespace \
  ${values[@]+"${values[@]}"} --wait --timeout 10m

say "Installed. Next steps:"
helm status "$release" --namespace "$namespace" --show-desc | sed -n '/NOTES:/,$p'
