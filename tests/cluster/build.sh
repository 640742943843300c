#!/usr/bin/env bash
# Builds whatever test-cluster binary is missing from the cache and says what it did.
# Cache: ${FBL_CACHE_DIR:-$HOME/.cache/feedbackloop}/bin/<component>-<version>
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
cache="${FBL_CACHE_DIR:-$HOME/.cache/feedbackloop}"
bin="$cache/bin"
mkdir -p "$bin"
export GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:--mod=mod}" CGO_ENABLED=0

built=0
note() { printf '[build] %s\n' "$*"; }

# build <name> <version> <workdir> <package> [ldflags]
build() {
  local name="$1" version="$2" dir="$3" pkg="$4" ldflags="${5:-}"
  local out="$bin/$name-$version"
  if [[ -x "$out" ]]; then
    note "$name $version: cached ($out)"
    return
  fi
  note "$name $version: building $pkg"
  local start=$SECONDS
  (cd "$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$out.tmp" "$pkg")
  mv "$out.tmp" "$out"
  built=$((built + 1))
  note "$name $version: built in $((SECONDS - start))s ($(du -h "$out" | cut -f1))"
}

# install_module <name> <version> <module/cmd path> [ldflags]: for tools whose go.mod has no local replaces.
install_module() {
  local name="$1" version="$2" pkg="$3" ldflags="${4:-}"
  local out="$bin/$name-$version"
  if [[ -x "$out" ]]; then
    note "$name $version: cached ($out)"
    return
  fi
  note "$name $version: building $pkg@$version"
  local start=$SECONDS tmp
  tmp="$(mktemp -d)"
  GOBIN="$tmp" GOFLAGS= go install -trimpath -ldflags "-s -w $ldflags" "$pkg@$version"
  mv "$tmp/$(basename "$pkg")" "$out"
  rmdir "$tmp"
  built=$((built + 1))
  note "$name $version: built in $((SECONDS - start))s ($(du -h "$out" | cut -f1))"
}

k8s_minor="${K8S_VERSION#v1.}"; k8s_minor="${k8s_minor%%.*}"
k8s_ldflags="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$k8s_minor -X k8s.io/component-base/version.gitTreeState=clean"

# kwok ships its default Stage objects inside its module; the harness loads them with --config.
kwok_stages() {
  local out="$cache/kwok-stages-$KWOK_VERSION.yaml"
  if [[ -s "$out" ]]; then
    note "kwok stages $KWOK_VERSION: cached ($out)"
    return
  fi
  local dir stage
  dir="$(cd "$here/k8s" && GOFLAGS= go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  : > "$out.tmp"
  for stage in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
      pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
    { echo "---"; cat "$dir/kustomize/stage/$stage.yaml"; } >> "$out.tmp"
  done
  mv "$out.tmp" "$out"
  built=$((built + 1))
  note "kwok stages $KWOK_VERSION: written from $dir ($out)"
}

# Redis (the model servers' shared prediction store) comes from Debian's package; the harness runs the binary.
debian_redis() {
  if command -v redis-server >/dev/null; then
    note "redis-server: installed ($(redis-server --version | cut -d' ' -f3))"
    return
  fi
  note "redis-server: installing Debian's package"
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  built=$((built + 1))
}

helm_k8s_stamp() { echo "-X helm.sh/helm/v3/pkg/$1.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/$1.k8sVersionMinor=37"; }

want="${*:-etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kwok-stages versitygw prometheus promtool helm redis}"
for component in $want; do
  case "$component" in
    etcd) build etcd "$ETCD_VERSION" "$here/etcd" . ;;
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl)
      build "$component" "$K8S_VERSION" "$here/k8s" "./cmd/$component" "$k8s_ldflags" ;;
    kwok) install_module kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok ;;
    kwok-stages) kwok_stages ;;
    versitygw) install_module versitygw "$VERSITYGW_VERSION" github.com/versity/versitygw/cmd/versitygw ;;
    # Debian's package is built without kubernetes_sd_configs, which pod discovery needs.
    prometheus) install_module prometheus "$PROMETHEUS_VERSION" github.com/prometheus/prometheus/cmd/prometheus ;;
    # The tests lint /metrics with it; same module as prometheus, so mostly already-compiled packages.
    promtool) install_module promtool "$PROMETHEUS_VERSION" github.com/prometheus/prometheus/cmd/promtool ;;
    # The stamps helm's Makefile sets: its version, and the Kubernetes version `helm template` and `helm lint`
    # assume offline (1.37: helm v3.22 is built on client-go v0.37); unstamped they are v3.22 and 1.20.
    helm) install_module helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
      "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION $(helm_k8s_stamp chartutil) $(helm_k8s_stamp lint/rules)" ;;
    # `make chart-scan` scores the rendered chart with it; not in the default list, the scan builds it.
    kube-score) install_module kube-score "$KUBE_SCORE_VERSION" github.com/zegl/kube-score/cmd/kube-score \
      "-X main.version=$KUBE_SCORE_VERSION" ;;
    redis) debian_redis ;;
    *) echo "unknown component: $component" >&2; exit 2 ;;
  esac
done
note "done: $built built or installed, cache $bin ($(du -sh "$bin" | cut -f1))"
