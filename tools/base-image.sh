#!/usr/bin/env bash
# Build the kit's base images locally from the Debian archive (no registry needed):
# mmdebstrap piped into `docker import`, systemd as PID 1, python3 for Ansible.
# Each image is tagged kit-debian:<release>-<recipe hash> and kit-debian:<release>; it is rebuilt
# only when that hash tag is missing, i.e. when the image is missing or this recipe changed.
# Usage: tools/base-image.sh [release ...]   (default: trixie bookworm)
set -euo pipefail

# What goes into every image. ssh/sudo make the image usable as a "bare-metal" host for the
# prod scenario; iproute2 gives testinfra `ss`; python3-apt serves Ansible's apt module.
packages=(
  systemd systemd-sysv dbus python3 python3-apt sudo openssh-server iproute2 procps
  ca-certificates curl less
)

recipe_hash() {
  { cat "$0"; printf '%s\n' "$1" "${packages[@]}"; } | sha256sum | cut -c1-12
}

ensure_mmdebstrap() {
  command -v mmdebstrap >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && [ -r /etc/debian_version ]; then
    echo "==> Installing mmdebstrap from the Debian archive"
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq mmdebstrap >/dev/null
  else
    echo "error: mmdebstrap is missing; install it (apt-get install mmdebstrap) and re-run." >&2
    exit 1
  fi
}

release_number() {
  case "$1" in
    trixie) echo 13 ;;
    bookworm) echo 12 ;;
    *) echo "error: unknown Debian release '$1' (known: trixie, bookworm)" >&2; exit 2 ;;
  esac
}

build() {
  local release=$1 number tag hash started
  number=$(release_number "$release")
  hash=$(recipe_hash "$release")
  tag="kit-debian:${number}-${hash}"
  if docker image inspect "$tag" >/dev/null 2>&1; then
    docker tag "$tag" "kit-debian:${number}"
    echo "==> Base image kit-debian:${number} is current ($tag)"
    return 0
  fi
  ensure_mmdebstrap
  echo "==> Building base image $tag from the Debian archive ($release)"
  started=$(date +%s)
  # The tarball streams straight into docker; nothing is written to the work tree.
  # Customize hooks: an empty machine-id (systemd fills it at boot), no getty on a container,
  # and a policy so that postinst scripts may start services, as on a real host.
  # Package lists stay in the image: apt works at once in a new container, and roles that
  # use cache_valid_time refresh them when they are older than that.
  timeout 900 mmdebstrap --quiet --variant=apt --skip=cleanup/apt/lists \
    --include="$(IFS=,; echo "${packages[*]}")" \
    --customize-hook='echo "" >"$1/etc/machine-id"' \
    --customize-hook='rm -f "$1"/etc/systemd/system/getty.target.wants/*' \
    --customize-hook='ln -sf /dev/null "$1/etc/systemd/system/systemd-timesyncd.service"' \
    --customize-hook='rm -f "$1/etc/ssh/ssh_host_"*' \
    --customize-hook='printf "[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n" | install -D -m 0644 /dev/stdin "$1/etc/systemd/system/ssh.service.d/hostkeys.conf"' \
    "$release" - \
    | docker import \
        --change 'CMD ["/lib/systemd/systemd"]' \
        --change 'ENV container=docker' \
        --message "kit base image, Debian $release, recipe $hash" \
        - "$tag" >/dev/null
  docker tag "$tag" "kit-debian:${number}"
  echo "==> Built $tag in $(( $(date +%s) - started ))s"
  # Drop the tags of earlier recipes so that old images do not pile up.
  docker image ls --format '{{.Repository}}:{{.Tag}}' "kit-debian" \
    | grep -E "^kit-debian:${number}-" | grep -vx "$tag" | xargs -r docker rmi >/dev/null || true
}

for release in "${@:-trixie bookworm}"; do
  for r in $release; do build "$r"; done
done
