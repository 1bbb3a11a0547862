#!/usr/bin/env bash
# Copies the static files into place: images/common/rootfs, then images/<role>/rootfs (so a
# role can override a common file). Everything ends up root-owned and not group/world-writable.
set -euo pipefail
# shellcheck source=images/common/provisioners/lib.sh
. "${OBSTACK_STAGING:-/tmp/obstack}/common/provisioners/lib.sh"
require_env OBSTACK_ROLE OBSTACK_STAGING

for tree in "$OBSTACK_STAGING/common/rootfs" "$OBSTACK_STAGING/role/rootfs"; do
  [ -d "$tree" ] || continue
  log "installing $(find "$tree" -type f | wc -l) files from ${tree#"$OBSTACK_STAGING"/}"
  # List the files first so only those get their owner and mode fixed, never / itself.
  (cd "$tree" && find . -type f -printf '%P\n') | while IFS= read -r file; do
    install -D --owner=root --group=root --mode=0644 "$tree/$file" "/$file"
  done
done
systemctl daemon-reload
# On the builder the new settings apply at once. In a chroot (the provisioning rehearsal,
# images/README.md) the kernel is the host's: leave it alone; the image applies them at boot.
if systemd-detect-virt --quiet --chroot; then
  log "in a chroot: sysctl settings apply when the image boots"
else
  sysctl --system >/dev/null
fi
