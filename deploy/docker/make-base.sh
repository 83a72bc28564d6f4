#!/bin/sh
# Make a local base image when none can be pulled: a minimal Debian 12 root filesystem from
# debootstrap (python3 + venv), imported into the container engine as <tag>.
#   deploy/docker/make-base.sh <rootfs-dir> <tag> [docker|podman]
# The root filesystem is built once and reused; re-import is cheap.
set -eu
rootfs=$1
tag=$2
engine=${3:-docker}
if [ ! -f "$rootfs.done" ]; then
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" http://deb.debian.org/debian
  # Nothing in the image needs the package caches or the docs.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc "$rootfs"/usr/share/man
  touch "$rootfs.done"
fi
tar -C "$rootfs" -c . | "$engine" import \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$tag"
