#!/usr/bin/env bash
# The Prometheus role: prometheus and promtool (pinned, verified), run as user prometheus,
# and Alertmanager with amtool, run as user alertmanager.
# The alert rules are static files from rootfs (/etc/prometheus/rules); the config is rendered.
set -euo pipefail
# shellcheck source=images/common/provisioners/lib.sh
. "${OBSTACK_STAGING:-/tmp/obstack}/common/provisioners/lib.sh"
require_env PROMETHEUS_VERSION ALERTMANAGER_VERSION

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fetch_component prometheus "$work/prometheus.tar.gz"
tar -xzf "$work/prometheus.tar.gz" -C "$work"
release="$work/prometheus-${PROMETHEUS_VERSION}.linux-amd64"
install -m 0755 "$release/prometheus" "$release/promtool" /usr/local/bin/

fetch_component alertmanager "$work/alertmanager.tar.gz"
tar -xzf "$work/alertmanager.tar.gz" -C "$work"
am_release="$work/alertmanager-${ALERTMANAGER_VERSION}.linux-amd64"
install -m 0755 "$am_release/alertmanager" "$am_release/amtool" /usr/local/bin/

ensure_system_user prometheus
install -d -m 0750 -o root -g prometheus /etc/prometheus
install -d -m 0755 -o root -g root /etc/prometheus/rules
install -d -m 0750 -o prometheus -g prometheus /var/lib/prometheus
chgrp -R prometheus /etc/prometheus

# Alertmanager has its own user; group prometheus only lets it reach its directory under
# Prometheus' data volume (/var/lib/prometheus/alertmanager, made by its unit at start).
ensure_system_user alertmanager prometheus
install -d -m 0750 -o root -g alertmanager /etc/alertmanager
# The webhook URLs' files (written by the agent from SSM, 0600): only alertmanager reads them.
install -d -m 0700 -o alertmanager -g alertmanager /etc/alertmanager/secrets

systemctl enable prometheus.service alertmanager.service
