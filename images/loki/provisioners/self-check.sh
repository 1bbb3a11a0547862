#!/usr/bin/env bash
# Proves the baked Loki image works before it is published: pinned versions, valid units, and
# a config rendered by the baked agent that `loki -verify-config` accepts.
set -euo pipefail
# shellcheck source=images/common/provisioners/lib.sh
. "${OBSTACK_STAGING:-/tmp/obstack}/common/provisioners/lib.sh"
require_env OBSTACK_ROLE

expect_version node_exporter /usr/local/bin/node_exporter --version
expect_version loki /usr/local/bin/loki -version
/usr/local/bin/stack-agent --help >/dev/null || die "stack-agent does not run"

verify_units stack-agent-mount.service stack-agent-render.service stack-agent-watch.service \
  node_exporter.service \
  loki.service

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/tags.json" <<'JSON'
{"obstack:role": "loki"}
JSON
render_with_sample_tags "$work/tags.json" "$work/root"
/usr/local/bin/loki -verify-config -config.file="$work/root/etc/loki/config.yaml" ||
  die "the rendered Loki config does not pass loki -verify-config"
log "self-check passed"
