#!/usr/bin/env bash
# Build the collection kit.jobqueue from the work tree and install the tarball, alone, into
# DEST (an empty collections path): what an operator's `ansible-galaxy collection install`
# leaves. molecule/redis_ha deploys from there, not from the work tree.
#   tools/install-collection.sh DEST
set -euo pipefail
dest=${1:?usage: tools/install-collection.sh DEST}
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
ansible-galaxy collection build --force --output-path "$build" "$root" >/dev/null
rm -rf "$dest"
# --no-deps: the dependencies (ansible.posix, community.*) come with the pinned ansible package.
ansible-galaxy collection install --no-deps --force -p "$dest" "$build"/kit-jobqueue-*.tar.gz
