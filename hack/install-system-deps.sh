#!/usr/bin/env bash
# Install the Debian packages the test suite and the demo need, when they are missing:
# PostgreSQL (tests start their own server in a temp dir as a non-root user), Prometheus
# (tests and the demo start their own server), openssl (dev-cluster certificates), procps,
# and the daemonless image tools of `make image` (hack/build-image.sh): buildah (+ crun, the
# OCI runtime `buildah run` uses) and mmdebstrap (the Debian base root filesystem).
# Idempotent: installs nothing when everything is present.
set -euo pipefail

need=()
have_pg() { compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; }
have_pg || need+=(postgresql)
command -v prometheus >/dev/null || need+=(prometheus)
command -v openssl >/dev/null || need+=(openssl)
command -v pgrep >/dev/null || need+=(procps)
command -v buildah >/dev/null || need+=(buildah)
command -v crun >/dev/null || command -v runc >/dev/null || need+=(crun)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)

if [[ ${#need[@]} -eq 0 ]]; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  SUDO=sudo
else
  SUDO=
fi
echo "[install-system-deps] installing: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# policy-rc.d keeps the packages' own system services from starting: we run our own.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod +x "$policy"
  created_policy=1
fi
trap '[[ $created_policy -eq 1 ]] && $SUDO rm -f "$policy"' EXIT
$SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
