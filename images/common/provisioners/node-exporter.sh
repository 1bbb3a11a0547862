#!/usr/bin/env bash
# node_exporter on every image: the pinned release, verified, run by its own user.
set -euo pipefail
# shellcheck source=images/common/provisioners/lib.sh
. "${OBSTACK_STAGING:-/tmp/obstack}/common/provisioners/lib.sh"
require_env NODE_EXPORTER_VERSION

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fetch_component node_exporter "$work/node_exporter.tar.gz"
tar -xzf "$work/node_exporter.tar.gz" -C "$work"
install -m 0755 "$work/node_exporter-${NODE_EXPORTER_VERSION}.linux-amd64/node_exporter" /usr/local/bin/node_exporter

ensure_system_user node_exporter
systemctl enable node_exporter.service
