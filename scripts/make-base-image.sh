#!/usr/bin/env bash
# Make a local Debian bookworm base image for the CPU variant of docker/Dockerfile, without any
# image registry: debootstrap a minimal root filesystem from the apt mirror, then `docker import` it.
#
#   scripts/make-base-image.sh [TAG]        (default TAG: tinyreason/bookworm-base:local; needs root)
#
# The image already holds what docker/Dockerfile would otherwise apt-get install (python3, venv,
# git, ...), so the Dockerfile's build needs no network on this base.
# Env: MIRROR (default http://deb.debian.org/debian), SUITE (default bookworm), KEEP_ROOTFS=1.
set -euo pipefail

TAG="${1:-tinyreason/bookworm-base:local}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SUITE="${SUITE:-bookworm}"
# Keep this list in step with the apt-get line of docker/Dockerfile.
PACKAGES="python3,python3-venv,python3-dev,gcc,libc6-dev,git,ca-certificates,tini"

if docker image inspect "$TAG" >/dev/null 2>&1 && [ "${FORCE:-0}" != 1 ]; then
    echo "make-base-image: $TAG already exists (FORCE=1 to remake)"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "make-base-image: debootstrap needs root (try: sudo $0)" >&2
    exit 1
fi
command -v debootstrap >/dev/null || { echo "make-base-image: apt-get install debootstrap" >&2; exit 1; }

rootfs="$(mktemp -d /var/tmp/tinyreason-rootfs.XXXXXX)"
cleanup() { [ "${KEEP_ROOTFS:-0}" = 1 ] || rm -rf "$rootfs"; }
trap cleanup EXIT

start=$(date +%s)
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR"
# Slim it down: apt lists, caches, docs (the image is only a build base).
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
       "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" > "$rootfs/etc/apt/sources.list"

tar -C "$rootfs" --numeric-owner -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    --message "debootstrap $SUITE (minbase) from $MIRROR" - "$TAG"
echo "make-base-image: $TAG ready in $(( $(date +%s) - start )) s"
