#!/usr/bin/env bash
# Proves the baked Grafana image works before it is published: pinned versions and valid
# units. Grafana has no offline config checker, and rendering its configs needs the SSM
# secret, so the rendered files are checked by the test suite instead (images/checks).
set -euo pipefail
# shellcheck source=images/common/provisioners/lib.sh
. "${OBSTACK_STAGING:-/tmp/obstack}/common/provisioners/lib.sh"
require_env OBSTACK_ROLE

expect_version node_exporter /usr/local/bin/node_exporter --version
expect_version grafana /opt/grafana/bin/grafana --version
/usr/local/bin/stack-agent --help >/dev/null || die "stack-agent does not run"

verify_units stack-agent-mount.service stack-agent-render.service stack-agent-watch.service \
  node_exporter.service \
  grafana-server.service
log "self-check passed"
