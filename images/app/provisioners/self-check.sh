#!/usr/bin/env bash
# Proves the baked app image works before it is published: pinned versions, valid units, and a
# Promtail config rendered by the baked agent from sample tags that Promtail itself accepts.
set -euo pipefail
# shellcheck source=images/common/provisioners/lib.sh
. "${OBSTACK_STAGING:-/tmp/obstack}/common/provisioners/lib.sh"
require_env OBSTACK_ROLE

expect_version node_exporter /usr/local/bin/node_exporter --version
expect_version promtail /usr/local/bin/promtail -version
/usr/local/bin/demo-app --help >/dev/null || die "demo-app does not run"
/usr/local/bin/stack-agent --help >/dev/null || die "stack-agent does not run"

verify_units stack-agent-mount.service stack-agent-render.service stack-agent-watch.service \
  node_exporter.service \
  demo-app.service promtail.service

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/tags.json" <<'JSON'
{"obstack:role": "app", "obstack:peer:loki": "10.0.0.30"}
JSON
render_with_sample_tags "$work/tags.json" "$work/root"
/usr/local/bin/promtail -check-syntax -config.file="$work/root/etc/promtail/config.yaml" ||
  die "the rendered Promtail config does not pass promtail -check-syntax"
log "self-check passed"
