#!/usr/bin/env bash
# The Prometheus role: prometheus and promtool (pinned, verified), run as user prometheus.
# The alert rules are static files from rootfs (/etc/prometheus/rules); the config is rendered.
set -euo pipefail
# shellcheck source=images/common/provisioners/lib.sh
. "${OBSTACK_STAGING:-/tmp/obstack}/common/provisioners/lib.sh"
require_env PROMETHEUS_VERSION

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fetch_component prometheus "$work/prometheus.tar.gz"
tar -xzf "$work/prometheus.tar.gz" -C "$work"
release="$work/prometheus-${PROMETHEUS_VERSION}.linux-amd64"
install -m 0755 "$release/prometheus" "$release/promtool" /usr/local/bin/

ensure_system_user prometheus
install -d -m 0750 -o root -g prometheus /etc/prometheus
install -d -m 0755 -o root -g root /etc/prometheus/rules
install -d -m 0750 -o prometheus -g prometheus /var/lib/prometheus
chgrp -R prometheus /etc/prometheus

systemctl enable prometheus.service
