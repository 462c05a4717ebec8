#!/usr/bin/env bash
# Pin the Dockerfile's base images by digest: each FROM image is resolved,
# by its tag, to the digest the registry serves now (the multi-platform
# index), and the FROM line rewritten as tag@sha256:<digest>. Run it before
# a release, where the registries are reachable, and commit the result.
# Needs docker with buildx.
set -euo pipefail
cd "$(dirname "$0")/.."

for ref in $(awk 'toupper($1) == "FROM" { for (i = 2; i <= NF; i++) if ($i !~ /^--/) { print $i; break } }' Dockerfile); do
  tagged=${ref%@*}
  # The first digest of the JSON is the index's own; the platforms'
  # manifests come after it.
  digest=$(docker buildx imagetools inspect "$tagged" --format '{{json .Manifest}}' |
    grep -o '"digest": *"sha256:[0-9a-f]\{64\}"' | head -n1 | grep -o 'sha256:[0-9a-f]*')
  if [ -z "$digest" ]; then
    echo "no digest for $tagged" >&2
    exit 1
  fi
  sed -i "s#\([ =]\)${ref//./\\.}\( \|\$\)#\1${tagged}@${digest}\2#" Dockerfile
  echo "$tagged@$digest"
done
