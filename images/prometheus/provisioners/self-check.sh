#!/usr/bin/env bash
# Proves the baked Prometheus image works before it is published: pinned versions, valid
# units, the baked alert rules, and configs rendered from sample tags that promtool and
# amtool accept.
set -euo pipefail
# shellcheck source=images/common/provisioners/lib.sh
. "${OBSTACK_STAGING:-/tmp/obstack}/common/provisioners/lib.sh"
require_env OBSTACK_ROLE

expect_version node_exporter /usr/local/bin/node_exporter --version
expect_version prometheus /usr/local/bin/prometheus --version
expect_version prometheus /usr/local/bin/promtool --version
expect_version alertmanager /usr/local/bin/alertmanager --version
expect_version alertmanager /usr/local/bin/amtool --version
/usr/local/bin/stack-agent --help >/dev/null || die "stack-agent does not run"

verify_units stack-agent-mount.service stack-agent-render.service stack-agent-watch.service \
  node_exporter.service \
  prometheus.service alertmanager.service

shopt -s nullglob
rules=(/etc/prometheus/rules/*.yml)
if [ "${#rules[@]}" -gt 0 ]; then
  /usr/local/bin/promtool check rules "${rules[@]}" || die "the baked alert rules do not pass promtool"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/tags.json" <<'JSON'
{"obstack:role": "prometheus", "obstack:peer:app": "10.0.0.10", "obstack:peer:loki": "10.0.0.30", "obstack:peer:grafana": "10.0.0.40", "obstack:alert-sns-topic-arn": "arn:aws:sns:us-east-1:123456789012:obstack-alerts"}
JSON
render_with_sample_tags "$work/tags.json" "$work/root"
/usr/local/bin/promtool check config "$work/root/etc/prometheus/prometheus.yml" ||
  die "the rendered Prometheus config does not pass promtool check config"
/usr/local/bin/amtool check-config "$work/root/etc/alertmanager/alertmanager.yml" ||
  die "the rendered Alertmanager config does not pass amtool check-config"
log "self-check passed"
