#!/usr/bin/env bash
# The boot agent: its binary, this role's spec and templates, and its three units.
# At boot stack-agent-mount.service mounts the role's data volume (roles with a [data]
# section), then stack-agent-render.service renders the configs before the role's services start;
# stack-agent-watch.service re-renders when a peer's address changes.
set -euo pipefail
# shellcheck source=images/common/provisioners/lib.sh
. "${OBSTACK_STAGING:-/tmp/obstack}/common/provisioners/lib.sh"
require_env OBSTACK_ROLE OBSTACK_STAGING

install -m 0755 "$OBSTACK_STAGING/artifacts/stack-agent" /usr/local/bin/stack-agent

spec_dir=/usr/share/stack-agent/roles/$OBSTACK_ROLE
[ -f "$OBSTACK_STAGING/role/role.toml" ] || die "images/$OBSTACK_ROLE/role.toml was not uploaded"
install -d -m 0755 "$spec_dir" "$spec_dir/templates"
install -m 0644 "$OBSTACK_STAGING/role/role.toml" "$spec_dir/role.toml"
if [ -d "$OBSTACK_STAGING/role/templates" ]; then
  find "$OBSTACK_STAGING/role/templates" -maxdepth 1 -type f -exec install -m 0644 -t "$spec_dir/templates" {} +
fi

# The units read the role from here, so the same unit files serve every image.
printf 'OBSTACK_ROLE=%s\n' "$OBSTACK_ROLE" >/etc/default/stack-agent
chmod 0644 /etc/default/stack-agent

systemctl enable stack-agent-mount.service stack-agent-render.service stack-agent-watch.service
