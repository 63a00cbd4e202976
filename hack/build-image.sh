#!/usr/bin/env bash
# Build the kubemeter images (Dockerfile targets `operator` and `exporter`) without a
# container daemon or a registry: buildah, on a Debian root filesystem made by mmdebstrap.
#
#   1. Base rootfs (once; cached): `mmdebstrap --variant=essential` of Debian $SUITE with
#      python3, python3-venv and ca-certificates, no docs/man/locales, usrmerge and perl
#      purged (~110 MB). Cached as a tarball keyed by suite, packages and options:
#        ${KUBEMETER_CACHE:-$HOME/.cache/kubemeter}/images/rootfs-<suite>-<key>.tar
#      and rebuilt when older than KUBEMETER_BASE_MAX_AGE_DAYS (default 30; security updates).
#   2. Base image: the tarball added to `buildah from scratch`, committed as
#      localhost/kubemeter-base:<suite>-<key> (skipped when present).
#   3. `buildah bud --layers --pull=never --build-arg BASE_IMAGE=<that> --target <t>` for each
#      target; the layer cache makes a rebuild with unchanged inputs take seconds. pip in the
#      build talks to PyPI; the host's CA bundle goes in as the build secret `ca` (for a
#      TLS-intercepting proxy; it is not stored in any layer).
#   4. Prints the images and their sizes.
#
# Images: ${IMAGE_PREFIX}kubemeter:${IMAGE_TAG} (operator) and
#         ${IMAGE_PREFIX}kubemeter-exporter:${IMAGE_TAG}   (default localhost/..., :dev)
# Run one: `buildah from <image>` then `buildah run --isolation chroot <ctr> -- kubemeter --version`
# (or `podman run`, where podman works). Docs: docs/images.md.
#
# Usage: hack/build-image.sh [--force-base] [--print-names] [operator|exporter ...]
#   --force-base   rebuild the base rootfs and image
#   --print-names  print "<target> <image>" lines and exit (tests use it)
# Environment: KUBEMETER_CACHE, IMAGE_PREFIX, IMAGE_TAG, SUITE (bookworm), DEBIAN_MIRROR,
#   DEBIAN_SECURITY_MIRROR, KUBEMETER_BASE_MAX_AGE_DAYS, PIP_CA_BUNDLE (default: the host's
#   bundle), BUILDAH_ISOLATION (default chroot: the OCI runtime cannot create cgroups on
#   hosts with hybrid cgroups, and chroot needs none), STORAGE_DRIVER (buildah's default:
#   overlay as root; set vfs where overlay cannot mount).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${KUBEMETER_CACHE:-${HOME}/.cache/kubemeter}"
IMAGE_DIR="${CACHE}/images"
IMAGE_PREFIX="${IMAGE_PREFIX:-localhost/}"
IMAGE_TAG="${IMAGE_TAG:-dev}"
SUITE="${SUITE:-bookworm}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
MAX_AGE_DAYS="${KUBEMETER_BASE_MAX_AGE_DAYS:-30}"
export BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"

# What goes into the base. Any change here changes the cache key.
BASE_PACKAGES="usr-is-merged,python3,python3-venv,ca-certificates"
# usrmerge (and the perl it pulls in, ~50 MB) is only needed while /usr is being merged.
BASE_PURGE="usrmerge libfile-find-rule-perl libnumber-compare-perl libtext-glob-perl perl libperl5.36 perl-modules-5.36 libgdbm-compat4"
BASE_OPTS=(
  --variant=essential
  --include="${BASE_PACKAGES}"
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --customize-hook="chroot \"\$1\" dpkg --purge ${BASE_PURGE} >/dev/null"
  --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/*'
)

FORCE_BASE=0
PRINT_NAMES=0
TARGETS=()
for arg in "$@"; do
  case "$arg" in
    --force-base) FORCE_BASE=1 ;;
    --print-names) PRINT_NAMES=1 ;;
    operator|exporter) TARGETS+=("$arg") ;;
    -h|--help) sed -n '2,32p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(operator exporter)

image_name() {
  case "$1" in
    operator) echo "${IMAGE_PREFIX}kubemeter:${IMAGE_TAG}" ;;
    exporter) echo "${IMAGE_PREFIX}kubemeter-exporter:${IMAGE_TAG}" ;;
  esac
}

if [[ $PRINT_NAMES -eq 1 ]]; then
  for t in "${TARGETS[@]}"; do echo "$t $(image_name "$t")"; done
  exit 0
fi

log() { echo "[build-image] $*" >&2; }
for tool in buildah mmdebstrap; do
  if ! command -v "$tool" >/dev/null; then
    echo "[build-image] $tool is missing: run hack/install-system-deps.sh (or make system-deps)" >&2
    exit 1
  fi
done

mkdir -p "${IMAGE_DIR}"
# One build at a time per cache (make image and a test may race).
exec 9>"${IMAGE_DIR}/.lock"
flock 9

KEY="$(printf '%s\n' "v1" "${SUITE}" "${BASE_OPTS[@]}" | sha256sum | cut -c1-12)"
ROOTFS="${IMAGE_DIR}/rootfs-${SUITE}-${KEY}.tar"
BASE_IMAGE="localhost/kubemeter-base:${SUITE}-${KEY}"
START=$SECONDS

if [[ -f "${ROOTFS}" && $FORCE_BASE -eq 0 ]] \
  && [[ -n "$(find "${ROOTFS}" -mtime "-${MAX_AGE_DAYS}" 2>/dev/null)" ]]; then
  log "base rootfs: ${ROOTFS} (cached)"
else
  log "base rootfs: mmdebstrap ${SUITE} -> ${ROOTFS}"
  tmp="${ROOTFS}.tmp-$$"
  trap 'rm -f "${tmp}"' EXIT
  mmdebstrap --quiet --format=tar "${BASE_OPTS[@]}" "${SUITE}" "${tmp}" \
    "deb ${DEBIAN_MIRROR} ${SUITE} main" \
    "deb ${DEBIAN_MIRROR} ${SUITE}-updates main" \
    "deb ${DEBIAN_SECURITY_MIRROR} ${SUITE}-security main"
  mv -f "${tmp}" "${ROOTFS}"
  trap - EXIT
  FORCE_BASE=1  # a new rootfs makes a new base image
  # Older rootfs tarballs of this suite are dead weight in the cache.
  find "${IMAGE_DIR}" -maxdepth 1 -name "rootfs-${SUITE}-*.tar" ! -name "$(basename "${ROOTFS}")" -delete
fi

if [[ $FORCE_BASE -eq 1 ]] || ! buildah inspect --type image "${BASE_IMAGE}" >/dev/null 2>&1; then
  log "base image: ${BASE_IMAGE}"
  ctr="$(buildah from --pull=never scratch)"
  buildah add --quiet "${ctr}" "${ROOTFS}" / >/dev/null
  buildah config --env LANG=C.UTF-8 --cmd '["python3"]' \
    --label org.opencontainers.image.base.name="debian:${SUITE} (mmdebstrap)" "${ctr}"
  buildah commit --quiet --rm "${ctr}" "${BASE_IMAGE}" >/dev/null
else
  log "base image: ${BASE_IMAGE} (present)"
fi

secret=()
ca="${PIP_CA_BUNDLE:-}"
if [[ -z "$ca" ]]; then
  for f in "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
    [[ -n "$f" && -s "$f" ]] && { ca="$f"; break; }
  done
fi
[[ -n "$ca" ]] && secret=(--secret "id=ca,src=${ca}")

mkdir -p "${CACHE}/logs"
for t in "${TARGETS[@]}"; do
  name="$(image_name "$t")"
  build_log="${CACHE}/logs/image-${t}-$(date +%Y%m%d-%H%M%S).log"
  log "target ${t} -> ${name} (log: ${build_log})"
  t0=$SECONDS
  old_id="$(buildah images --quiet --no-trunc "$name" 2>/dev/null || true)"
  if ! buildah bud --layers --pull=never \
    --build-arg "BASE_IMAGE=${BASE_IMAGE}" "${secret[@]}" \
    --target "$t" --tag "$name" --file "${ROOT}/Dockerfile" "${ROOT}" >"${build_log}" 2>&1; then
    tail -n 40 "${build_log}" >&2
    log "target ${t} FAILED (full log: ${build_log})"
    exit 1
  fi
  # The image it replaces (a source change) would stay behind untagged, ~300 MB each time.
  if [[ -n "$old_id" && "$old_id" != "$(buildah images --quiet --no-trunc "$name")" ]]; then
    buildah rmi "$old_id" >/dev/null 2>&1 || true
  fi
  log "target ${t}: $((SECONDS - t0)) s"
done

log "done in $((SECONDS - START)) s"
for t in "${TARGETS[@]}"; do
  buildah images --format '{{.Name}}:{{.Tag}}  {{.Size}}' "$(image_name "$t")"
done
