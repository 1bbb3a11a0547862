#!/usr/bin/env bash
# The Grafana role: Grafana OSS (pinned, verified) unpacked read-only at /opt/grafana, run as
# user grafana. Provisioning files and the admin password file are written by the agent at
# boot; the dashboards are static files from rootfs (/etc/grafana/dashboards), off the data
# volume the agent mounts over /var/lib/grafana at boot (it would hide anything baked there).
set -euo pipefail
# shellcheck source=images/common/provisioners/lib.sh
. "${OBSTACK_STAGING:-/tmp/obstack}/common/provisioners/lib.sh"
require_env GRAFANA_VERSION

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fetch_component grafana "$work/grafana.tar.gz"
rm -rf /opt/grafana
install -d -m 0755 /opt/grafana
# The archive's top directory is named after the version (grafana-v13.2.2 or similar).
tar -xzf "$work/grafana.tar.gz" -C /opt/grafana --strip-components=1 --no-same-owner
chown -R root:root /opt/grafana
chmod -R go-w /opt/grafana
[ -x /opt/grafana/bin/grafana ] || die "the Grafana archive has no bin/grafana"

ensure_system_user grafana
# Grafana reads every provisioning folder and logs an error for each missing one; alerting
# and plugins stay empty (the alert rules live in Prometheus).
install -d -m 0750 -o root -g grafana /etc/grafana /etc/grafana/provisioning \
  /etc/grafana/provisioning/datasources /etc/grafana/provisioning/dashboards \
  /etc/grafana/provisioning/alerting /etc/grafana/provisioning/plugins
install -d -m 0700 -o grafana -g grafana /etc/grafana/secrets
# Only the mount point: grafana.db, the secret key and plugins/ live on the data volume,
# whose directories `stack-agent mount` creates (images/grafana/role.toml, [data]).
install -d -m 0750 -o grafana -g grafana /var/lib/grafana
[ -d /etc/grafana/dashboards ] || die "no baked dashboards in /etc/grafana/dashboards"
chown -R root:grafana /etc/grafana/dashboards
chmod -R u=rwX,g=rX,o= /etc/grafana/dashboards

systemctl enable grafana-server.service
