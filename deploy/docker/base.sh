#!/usr/bin/env bash
# The base image every classforge image starts FROM: `classforge-base:py311`.
#   - python:3.11-slim when the engine can pull it;
#   - otherwise (no registry, the usual case here) a Debian bookworm root filesystem made with
#     debootstrap (python3.11 + venv, CA certificates) and loaded with `docker import`.
# The debootstrap tarball is cached in $CACHE/docker-base, so a second machine run or a fresh
# clone only re-imports it (seconds). Usage: deploy/docker/base.sh
set -euo pipefail
source "$(dirname "$0")/../local/lib.sh"
COMPONENT=base
TAG=classforge-base:py311
MIRROR=${CLASSFORGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
TARBALL="$CACHE/docker-base/bookworm-py311.tar"
PACKAGES=python3.11,ca-certificates

if docker image inspect "$TAG" >/dev/null 2>&1; then log "$TAG present"; exit 0; fi

# Pinned by digest (taken 2026-11-28 from public projects that pin it; bump it with requirements.lock).
PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
if timeout 60 docker pull -q "$PYTHON_IMAGE" >/dev/null 2>&1; then
  docker tag "$PYTHON_IMAGE" "$TAG"
  log "$TAG = $PYTHON_IMAGE (pulled)"
  exit 0
fi

if [[ ! -s $TARBALL ]]; then
  command -v debootstrap >/dev/null || apt_install debootstrap
  root=$(mktemp -d /tmp/classforge-rootfs.XXXXXX)
  trap 'as_root rm -rf "$root"' EXIT
  log "no registry: debootstrap bookworm ($PACKAGES) from $MIRROR"
  t0=$SECONDS
  as_root debootstrap --variant=minbase --include="$PACKAGES" bookworm "$root" "$MIRROR" >/tmp/classforge-debootstrap.log 2>&1 \
    || { tail -n 5 /tmp/classforge-debootstrap.log >&2; die "debootstrap failed (log: /tmp/classforge-debootstrap.log)"; }
  # Same names the official image offers, so the Dockerfiles work on either base.
  as_root ln -sf python3.11 "$root/usr/bin/python3"
  as_root ln -sf python3.11 "$root/usr/bin/python"
  as_root rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  mkdir -p "$(dirname "$TARBALL")"
  as_root tar -C "$root" -cf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL"
  log "rootfs made in $((SECONDS - t0)) s ($(du -h "$TARBALL" | cut -f1))"
fi
docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  --change 'CMD ["python3"]' "$TARBALL" "$TAG" >/dev/null
log "$TAG imported from $TARBALL"
