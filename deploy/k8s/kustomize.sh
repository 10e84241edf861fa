#!/usr/bin/env bash
# Prints the path of a kustomize binary, building it first if it is not cached: from the Go
# module proxy only (`go install`), pinned, into the repository's var/tools. Nothing else is
# downloaded. Used by `make k8s` and tests/deploy; see docs/adr/0019-kubernetes-backups-retention.md.
#
#   KUSTOMIZE_VERSION   the sigs.k8s.io/kustomize/kustomize/v5 version (default below)
#   PORTLINE_TOOLS_DIR  where the binary and Go's caches go (default var/tools)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
version="${KUSTOMIZE_VERSION:-v5.7.1}"
tools="${PORTLINE_TOOLS_DIR:-$root/var/tools}"
bin="$tools/kustomize-$version/kustomize"
if [[ ! -x "$bin" ]]; then
  command -v go >/dev/null || { echo "kustomize.sh: Go is needed to build kustomize" >&2; exit 2; }
  mkdir -p "$tools"
  # One build at a time: `make test` starts one in the background, the tests wait for it.
  exec 9>"$tools/.kustomize.lock"
  flock 9
  if [[ ! -x "$bin" ]]; then
    echo "kustomize.sh: building kustomize $version from the Go module proxy (once)" >&2
    GOBIN="$tools/kustomize-$version" GOMODCACHE="$tools/go/mod" GOCACHE="$tools/go/cache" \
      GOPATH="$tools/go" GOTOOLCHAIN=local GOFLAGS="-buildvcs=false -trimpath" CGO_ENABLED=0 \
      go install "sigs.k8s.io/kustomize/kustomize/v5@$version" >&2
  fi
  exec 9>&-
fi
echo "$bin"
