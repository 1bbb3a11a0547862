#!/usr/bin/env bash
# Last step of every bake: remove everything that identifies this builder instance or could
# let someone in, then prove it is gone. Each launched instance must get its own machine-id,
# SSH host keys and cloud-init run; no key, password or history may ship in the AMI.
set -euo pipefail
# shellcheck source=images/common/provisioners/lib.sh
. "${OBSTACK_STAGING:-/tmp/obstack}/common/provisioners/lib.sh"
require_env OBSTACK_STAGING

log "removing bake leftovers"
rm -rf "$OBSTACK_STAGING"
apt_get -y -q clean
rm -rf /var/lib/apt/lists/*

# Identity: a fresh machine-id (systemd creates it on first boot when the file is empty),
# fresh SSH host keys and a first-boot cloud-init run on every instance.
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
rm -f /etc/ssh/ssh_host_*
cloud-init clean --logs --seed
rm -rf /var/lib/cloud/instances /var/lib/cloud/instance

# Access: no authorized key for anyone (Packer's temporary key included), no history.
shopt -s nullglob
homes=(/root /home/*)
for home in "${homes[@]}"; do
  rm -f "$home/.ssh/authorized_keys" "$home"/.*_history "$home/.lesshst" "$home/.viminfo"
done
rm -f /etc/ssh/authorized_keys /etc/ssh/authorized_keys.d/*

# Logs of the bake itself. The journal is journald's to trim (rotate, then drop the archived
# files); its live files are never truncated under it, which would leave journald writing
# into a corrupted file that every instance then starts with.
journalctl --rotate >/dev/null 2>&1 || true
journalctl --vacuum-time=1s >/dev/null 2>&1 || true
find /var/log -type f -not -path '/var/log/journal/*' \
  \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) -delete
find /var/log -type f -not -path '/var/log/journal/*' -exec truncate -s 0 {} +

# The proof: fail the bake, and so publish no AMI, if anything above survived.
leftovers=()
for home in "${homes[@]}"; do
  for file in "$home/.ssh/authorized_keys" "$home"/.*_history; do
    if [ -e "$file" ]; then leftovers+=("$file"); fi
  done
  if [ -d "$home/.ssh" ] && grep -rlsi 'packer' "$home/.ssh" >/dev/null; then
    leftovers+=("$home/.ssh (mentions packer)")
  fi
done
for file in /etc/ssh/ssh_host_* /etc/ssh/authorized_keys.d/*; do
  leftovers+=("$file")
done
if [ -s /etc/machine-id ]; then leftovers+=("/etc/machine-id (not empty)"); fi
if [ -e "$OBSTACK_STAGING" ]; then leftovers+=("$OBSTACK_STAGING"); fi
if [ "${#leftovers[@]}" -gt 0 ]; then
  die "the image still holds: ${leftovers[*]}"
fi
log "clean: no keys, history, host identity or staging files left"
