#!/usr/bin/env bash
# Base of every image: current security updates and the few packages provisioning needs.
# Hardening settings themselves are files in images/common/rootfs (sysctl, sshd, journald).
set -euo pipefail
# shellcheck source=images/common/provisioners/lib.sh
. "${OBSTACK_STAGING:-/tmp/obstack}/common/provisioners/lib.sh"

stop_apt_timers
log "applying security updates"
apt_get update -q
apt_get -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold upgrade
# curl for the verified downloads; everything else comes as a pinned release binary.
apt_get -y -q install --no-install-recommends ca-certificates curl
apt_get -y -q autoremove --purge

# Nothing on these images needs them, and each is one more listener or setuid path.
for unit in multipathd.service multipathd.socket; do
  systemctl disable --now "$unit" >/dev/null 2>&1 || true
done
