#!/usr/bin/env bash
# The two images, built on this machine without a Docker engine (podman or buildah; installed from
# Debian when missing), both FROM scratch, from the release binary and files of the host's Debian
# packages:
#
#   proxy-telemetry       the binary, exactly the shared libraries it links (ldd), CA certificates
#                         (the Kubernetes client falls back to the system's roots), /etc/passwd and
#                         /etc/group with nonroot (65532); runs as 65532:65532. Every subcommand:
#                         meter, inject-webhook, load, check, report, fake-vendor, fake-origin.
#   proxy-telemetry-init  the same binary plus iptables for the injected init container
#                         (init-iptables): iptables, ip6tables and their -restore/-save tools with
#                         the nf_tables and the legacy backend (--iptables iptables-legacy), their
#                         libraries and extensions; runs as root (the pod grants NET_ADMIN/NET_RAW).
#
# Neither image has a shell or a package manager. /var/lib/dpkg/status.d names the Debian packages
# whose files were copied (as distroless does), so SBOM generators and scanners see glibc and
# iptables. The images' configuration (user, entrypoint, command, ports, labels) is written once,
# in the Dockerfile's final stages `meter` and `init`: this script builds those stages over root
# filesystems it assembles, and the Dockerfile assembles them with this script (--rootfs), so the
# images built here and those the release workflow builds with Docker hold the same files.
#
#   scripts/build-images.sh                                 # localhost/proxy-telemetry{,-init}:<version>
#   scripts/build-images.sh --binary target/debug/proxy-telemetry   # no cargo build
#   scripts/build-images.sh --registry ghcr.io/proxy-telemetry      # the names the Helm chart uses
#   scripts/build-images.sh --rootfs DIR --binary PATH      # only the root filesystems, DIR/{meter,init}
#
# The images are for this machine's architecture; the release workflow builds linux/amd64 and
# linux/arm64 from the Dockerfile. The tag is the version in Cargo.toml, which must equal the
# chart's appVersion (deploy/helm/proxy-telemetry/Chart.yaml) and the binary's --version.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
  echo "options: --binary PATH  --registry PREFIX (default localhost)  --tag TAG (default: the version)  --rootfs DIR"
}

binary="" registry="localhost" tag="" rootfs_only=""
while (($#)); do
  case "$1" in
    --binary) binary=$(realpath -e -- "${2:?--binary needs a path}"); shift 2 ;;
    --registry) registry=${2:?--registry needs a prefix, e.g. ghcr.io/proxy-telemetry}; registry=${registry%/}; shift 2 ;;
    --tag) tag=${2:?--tag needs a value}; shift 2 ;;
    --rootfs) rootfs_only=$(realpath -m -- "${2:?--rootfs needs a directory}"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 64 ;;
  esac
done
cd "$(dirname "$0")/.."

# The image users: root for the init container, nonroot (distroless' uid) for everything else.
passwd='root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin'
group='root:x:0:
nobody:x:65534:
nonroot:x:65532:'
# Without this file glibc asks DNS before /etc/hosts.
nsswitch='passwd: files
group: files
hosts: files dns'

# add ROOT PATH: copies PATH from this machine into ROOT at the same place, recreating each
# symbolic link on the way (libfoo.so.1 -> libfoo.so.1.2.3, iptables-restore -> xtables-nft-multi).
# Directory links (/lib -> usr/lib) are resolved: ROOT gets the same links from `base`.
add() {
  local root=$1 path=$2 dir target
  dir=$(realpath -e -- "$(dirname -- "$path")")
  path="${dir%/}/$(basename -- "$path")"
  [[ -e "$root$path" || -L "$root$path" ]] && return 0
  mkdir -p -- "$root$dir"
  if [[ -L "$path" ]]; then
    target=$(readlink -- "$path")
    ln -s -- "$target" "$root$path"
    [[ "$target" == /* ]] || target="$dir/$target"
    add "$root" "$target"
  else
    cp --preserve=mode -- "$path" "$root$path"
  fi
}

# libraries FILE...: the shared libraries the ELF files load, as ldd resolves them here (none
# for a static binary); fails on a library this machine lacks.
libraries() {
  local file out
  for file; do
    out=$(LC_ALL=C ldd "$file" 2>&1) || {
      grep -Eq 'not a dynamic executable|statically linked' <<<"$out" && continue
      echo "ldd $file: $out" >&2; return 1
    }
    if grep -q 'not found' <<<"$out"; then
      echo "$file needs libraries this machine lacks:" >&2; grep 'not found' <<<"$out" >&2; return 1
    fi
    # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
    awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$out"
  done | sort -u
}

# packages ROOT SOURCE...: records the Debian packages that own the SOURCE paths (copied into
# ROOT) in ROOT/var/lib/dpkg/status.d/<package>, with their copyright files.
packages() {
  local root=$1 pkg name path paths=()
  shift
  # Each path as given and with its directory resolved: ldd says /lib/…/libxtables.so.12,
  # libxtables12 ships /usr/lib/…/libxtables.so.12 (merged /usr).
  for path; do paths+=("$path" "$(realpath -e -- "$(dirname -- "$path")")/$(basename -- "$path")"); done
  mkdir -p "$root/var/lib/dpkg/status.d"
  { LC_ALL=C dpkg-query --search "${paths[@]}" 2>/dev/null || true; } \
    | awk -F': ' '!/^diversion/ {n = split($1, p, ", "); for (i = 1; i <= n; i++) print p[i]}' \
    | sort -u | while read -r pkg; do
      name=${pkg%%:*}
      dpkg-query --status "$pkg" | sed -n '/^$/q;p' >"$root/var/lib/dpkg/status.d/$name"
      if [[ -f "/usr/share/doc/$name/copyright" ]]; then
        mkdir -p "$root/usr/share/doc/$name"
        cp "/usr/share/doc/$name/copyright" "$root/usr/share/doc/$name/copyright"
      fi
    done
}

# base ROOT: the binary, its libraries and the files every image has.
base() {
  local root=$1 d lib
  rm -rf -- "$root"
  mkdir -p -- "$root"/{etc,run,usr/local/bin}
  install -d -m 1777 "$root/tmp"
  # Merged /usr (Debian 12): the loader is /lib64/ld-linux-x86-64.so.2 through these links.
  for d in lib lib32 lib64 libx32; do
    [[ -L "/$d" ]] && ln -s -- "$(readlink "/$d")" "$root/$d"
  done
  cp --preserve=mode -- "$binary" "$root/usr/local/bin/proxy-telemetry"
  chmod 0755 "$root/usr/local/bin/proxy-telemetry"
  while read -r lib; do add "$root" "$lib"; done < <(libraries "$binary")
  printf '%s\n' "$passwd" >"$root/etc/passwd"
  printf '%s\n' "$group" >"$root/etc/group"
  printf '%s\n' "$nsswitch" >"$root/etc/nsswitch.conf"
}

assemble_meter() {
  local root=$1 certs=/etc/ssl/certs/ca-certificates.crt
  base "$root"
  [[ -f "$certs" ]] || { echo "$certs is missing: apt-get install ca-certificates" >&2; return 1; }
  mkdir -p "$root/etc/ssl/certs"
  cp "$certs" "$root/etc/ssl/certs/ca-certificates.crt"
  # shellcheck disable=SC2046 # one path per line, no spaces
  packages "$root" $(libraries "$binary") /usr/share/ca-certificates
}

assemble_init() {
  local root=$1 sbin=/usr/sbin tool plugins lib
  base "$root"
  command -v dpkg-query >/dev/null || { echo "the init image is assembled from Debian's iptables package: a Debian host is needed" >&2; return 1; }
  dpkg-query --status iptables >/dev/null 2>&1 || { echo "iptables is not installed: apt-get install iptables" >&2; return 1; }
  mapfile -t plugins < <(dpkg-query --listfiles iptables | grep -E '/xtables/lib[^/]*\.so$')
  ((${#plugins[@]})) || { echo "no iptables extensions found in Debian's iptables package" >&2; return 1; }
  add "$root" "$sbin/xtables-nft-multi"
  add "$root" "$sbin/xtables-legacy-multi"
  for lib in "${plugins[@]}"; do add "$root" "$lib"; done
  while read -r lib; do add "$root" "$lib"; done \
    < <(libraries "$sbin/xtables-nft-multi" "$sbin/xtables-legacy-multi" "${plugins[@]}")
  # The multi-call binaries pick the tool by name. `iptables` is nf_tables, as Debian's default
  # alternative (no /etc/alternatives here); init-iptables --iptables iptables-legacy for the
  # nodes that still use the legacy backend.
  for tool in iptables ip6tables; do
    for suffix in "" -restore -save; do
      ln -sf xtables-nft-multi "$root$sbin/$tool$suffix"
      ln -sf xtables-nft-multi "$root$sbin/$tool-nft$suffix"
      ln -sf xtables-legacy-multi "$root$sbin/$tool-legacy$suffix"
    done
  done
  # shellcheck disable=SC2046 # one path per line, no spaces
  packages "$root" $(libraries "$binary" "$sbin/xtables-nft-multi" "$sbin/xtables-legacy-multi" "${plugins[@]}") \
    "$sbin/xtables-nft-multi"
}

if [[ -n "$rootfs_only" ]]; then
  [[ -n "$binary" ]] || { echo "--rootfs needs --binary" >&2; exit 64; }
  assemble_meter "$rootfs_only/meter"
  assemble_init "$rootfs_only/init"
  echo "root filesystems in $rootfs_only/meter and $rootfs_only/init"
  exit 0
fi

# The image builder (podman, or buildah) and what the images take from the host, from Debian
# when missing.
packages=()
command -v podman >/dev/null || packages+=(podman)
command -v buildah >/dev/null || packages+=(buildah)
command -v iptables-restore >/dev/null || packages+=(iptables)
[[ -f /etc/ssl/certs/ca-certificates.crt ]] || packages+=(ca-certificates)
if ((${#packages[@]})); then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing ${packages[*]} (Debian packages)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi
if command -v podman >/dev/null; then cli=podman build=(podman build); else cli=buildah build=(buildah bud); fi

version=$(awk -F'"' '/^\[/ {section = $0} section == "[workspace.package]" && /^version *=/ {print $2; exit}' Cargo.toml)
app_version=$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"[:space:]]*\)"\{0,1\}[[:space:]]*$/\1/p' deploy/helm/proxy-telemetry/Chart.yaml)
[[ -n "$version" ]] || { echo "no [workspace.package] version in Cargo.toml" >&2; exit 1; }
if [[ "$version" != "$app_version" ]]; then
  echo "Cargo.toml's version $version differs from the chart's appVersion $app_version (deploy/helm/proxy-telemetry/Chart.yaml): the chart would pull images that do not exist" >&2
  exit 1
fi
if [[ -z "$binary" ]]; then
  cargo build --release --locked -p proxy-telemetry
  binary=$(realpath -e "${CARGO_TARGET_DIR:-target}/release/proxy-telemetry")
fi
reported=$("$binary" --version)
[[ "$reported" == "proxy-telemetry $version" ]] || {
  echo "$binary reports '$reported', Cargo.toml says $version: rebuild it" >&2; exit 1
}
tag=${tag:-$version}
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
# Reproducible: the same binary at the same commit gives the same image id.
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)

# A build context per run (two runs at once do not collide), removed afterwards.
mkdir -p "${CARGO_TARGET_DIR:-target}"
context=$(mktemp -d "${CARGO_TARGET_DIR:-target}/images.XXXXXX")
trap 'rm -rf "$context"' EXIT
for stage in meter init; do
  "assemble_$stage" "$context/$stage"
  # The Dockerfile's final stage, reading the root filesystem from the build context rather
  # than from its `rootfs` stage.
  awk -v stage="$stage" '/^FROM / {on = ($0 == "FROM scratch AS " stage)} on && !/^#/' Dockerfile \
    | sed 's#^COPY --from=rootfs /rootfs/#COPY #' >"$context/Containerfile.$stage"
  grep -qx "COPY $stage/ /" "$context/Containerfile.$stage" || {
    echo "the Dockerfile has no stage 'FROM scratch AS $stage' with 'COPY --from=rootfs /rootfs/$stage/ /'" >&2; exit 1
  }
done

for stage in meter init; do
  name=proxy-telemetry; [[ "$stage" == init ]] && name=proxy-telemetry-init
  image="$registry/$name:$tag"
  old=$($cli images --quiet --no-trunc "$image" 2>/dev/null | head -n 1 || true)
  "${build[@]}" --quiet --layers=false --file "$context/Containerfile.$stage" --timestamp "$epoch" \
    --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
    --label "org.opencontainers.image.created=$created" \
    --tag "$image" "$context" >/dev/null
  new=$($cli images --quiet --no-trunc "$image" | head -n 1)
  # The image this tag named before, unless something else still uses it.
  if [[ -n "$old" && "$old" != "$new" ]]; then $cli rmi "$old" >/dev/null 2>&1 || true; fi
  echo "$image ${new#sha256:}"
done
