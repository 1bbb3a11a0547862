#!/usr/bin/env bash
# The Loki role: the single Loki binary (pinned, verified), run as user loki, data in
# /var/lib/loki.
set -euo pipefail
# shellcheck source=images/common/provisioners/lib.sh
. "${OBSTACK_STAGING:-/tmp/obstack}/common/provisioners/lib.sh"
require_env LOKI_VERSION

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fetch_component loki "$work/loki.zip"
unzip_to "$work/loki.zip" "$work"
install -m 0755 "$work/loki-linux-amd64" /usr/local/bin/loki

ensure_system_user loki
install -d -m 0750 -o root -g loki /etc/loki
install -d -m 0750 -o loki -g loki /var/lib/loki

systemctl enable loki.service
