#!/usr/bin/env bash
# The app role: demo-app (our release binary) and Promtail (pinned, verified), each with its
# own system user. Promtail joins group demo-app to read the app's log directory, nothing more.
set -euo pipefail
# shellcheck source=images/common/provisioners/lib.sh
. "${OBSTACK_STAGING:-/tmp/obstack}/common/provisioners/lib.sh"
require_env OBSTACK_STAGING PROMTAIL_VERSION

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

install -m 0755 "$OBSTACK_STAGING/artifacts/demo-app" /usr/local/bin/demo-app

fetch_component promtail "$work/promtail.zip"
unzip_to "$work/promtail.zip" "$work"
install -m 0755 "$work/promtail-linux-amd64" /usr/local/bin/promtail

ensure_system_user demo-app
ensure_system_user promtail
# The agent renders /etc/default/demo-app and /etc/promtail/config.yaml at boot.
install -d -m 0750 -o root -g promtail /etc/promtail
install -d -m 0750 -o demo-app -g demo-app /var/log/demo-app
install -d -m 0750 -o promtail -g promtail /var/lib/promtail

systemctl enable demo-app.service promtail.service
