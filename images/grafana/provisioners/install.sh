#!/usr/bin/env bash
# The Grafana role: Grafana OSS (pinned, verified) unpacked read-only at /opt/grafana, run as
# user grafana. Provisioning files and the admin password file are written by the agent at
# boot; the dashboards are static files from rootfs (/var/lib/grafana/dashboards).
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
install -d -m 0750 -o root -g grafana /etc/grafana /etc/grafana/provisioning \
  /etc/grafana/provisioning/datasources /etc/grafana/provisioning/dashboards
install -d -m 0700 -o grafana -g grafana /etc/grafana/secrets
install -d -m 0750 -o grafana -g grafana /var/lib/grafana /var/lib/grafana/plugins /var/log/grafana
if [ -d /var/lib/grafana/dashboards ]; then
  chown -R root:grafana /var/lib/grafana/dashboards
  chmod -R u=rwX,g=rX,o= /var/lib/grafana/dashboards
fi

systemctl enable grafana-server.service
