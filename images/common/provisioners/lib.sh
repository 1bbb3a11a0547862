#!/usr/bin/env bash
# Helpers shared by the provisioning scripts. Sourced, never run: every script starts with
#   . "${OBSTACK_STAGING:-/tmp/obstack}/common/provisioners/lib.sh"
# Settings come only from the environment (Packer's environment_vars).

log() { printf '==> [%s] %s\n' "${OBSTACK_ROLE:-?}" "$*" >&2; }

die() {
  printf 'error: [%s] %s\n' "${OBSTACK_ROLE:-?}" "$*" >&2
  exit 1
}

# apt_get ARGS...: apt-get that waits up to 10 minutes for the dpkg lock instead of failing at
# once: on a fresh Ubuntu instance apt-daily and unattended-upgrades often hold it. Every
# provisioner calls apt-get only through this (images/checks/tests/checks/bake_readiness.rs).
apt_get() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }

# stop_apt_timers: no new apt-daily or unattended-upgrades run during the bake (the ones
# running finish first: systemctl stop waits). They stay enabled in the image. Units a base
# image lacks (or a chroot, where systemctl ignores stop) are not an error.
stop_apt_timers() {
  systemctl stop apt-daily.timer apt-daily-upgrade.timer apt-daily.service \
    apt-daily-upgrade.service unattended-upgrades.service >/dev/null 2>&1 || true
}

# require_env NAME...: every NAME must be set and non-empty.
require_env() {
  local name
  for name in "$@"; do
    [ -n "${!name:-}" ] || die "$name is not set; Packer passes it from images/versions.toml through the bake's var file"
  done
}

# The upper-case prefix of a component's settings: node_exporter -> NODE_EXPORTER.
component_prefix() { printf '%s' "$1" | tr '[:lower:]-' '[:upper:]_'; }

# fetch_verified URL SHA256 DEST: download over HTTPS and refuse anything whose SHA-256 is not
# exactly the pinned one. Nothing unverified is ever left at DEST.
fetch_verified() {
  local url=$1 expected=$2 dest=$3
  case $expected in
    unverified | "") die "no verified SHA-256 for $url; run \`cargo xtask pin\` and bake again" ;;
  esac
  [[ $expected =~ ^[0-9a-f]{64}$ ]] || die "pinned SHA-256 for $url is not 64 hex digits: $expected"
  log "downloading $url"
  curl --fail --silent --show-error --location --proto '=https' --tlsv1.2 \
    --retry 3 --retry-delay 2 --connect-timeout 20 --max-time 900 \
    --output "$dest" "$url"
  if ! printf '%s  %s\n' "$expected" "$dest" | sha256sum --check --strict --quiet -; then
    local actual
    actual=$(sha256sum "$dest" | cut -d' ' -f1)
    rm -f "$dest"
    die "SHA-256 mismatch for $url (expected $expected, got $actual); refusing it"
  fi
  log "verified $(basename "$dest") against $expected"
}

# fetch_component NAME DEST: fetch_verified with NAME's pinned URL and SHA-256.
fetch_component() {
  local prefix
  prefix=$(component_prefix "$1")
  require_env "${prefix}_VERSION" "${prefix}_URL" "${prefix}_SHA256"
  local url_var="${prefix}_URL" sum_var="${prefix}_SHA256"
  fetch_verified "${!url_var}" "${!sum_var}" "$2"
}

# unzip_to ARCHIVE DIR: Ubuntu's cloud image has python3 (cloud-init needs it) but no unzip.
unzip_to() { python3 -m zipfile -e "$1" "$2"; }

# service_id NAME: NAME's fixed uid/gid from OBSTACK_SERVICE_IDS ("name:id name:id ...", the
# role registry's [users], passed by the bake's var file); dies when NAME has none.
service_id() {
  local entry
  for entry in ${OBSTACK_SERVICE_IDS:-}; do
    if [ "${entry%%:*}" = "$1" ]; then
      printf '%s' "${entry#*:}"
      return 0
    fi
  done
  die "no fixed id for the service user $1: add it to [users] in images/${OBSTACK_ROLE:-<role>}/role.toml (or images/common/services.toml)"
}

# ensure_system_user NAME [EXTRA_GROUP]: a locked system account with no home and no shell,
# and a group of its own name, both at NAME's fixed id (service_id): the data volume's files
# keep meaning the same owner on every rebake. An account or group that exists with another
# id, or an id a base-image account already holds, stops the bake instead of shifting.
ensure_system_user() {
  local name=$1 fixed holder
  fixed=$(service_id "$name")
  if getent group "$name" >/dev/null; then
    [ "$(getent group "$name" | cut -d: -f3)" = "$fixed" ] ||
      die "group $name exists with gid $(getent group "$name" | cut -d: -f3), not its fixed $fixed"
  else
    holder=$(getent group "$fixed" | cut -d: -f1 || true)
    [ -z "$holder" ] || die "gid $fixed (fixed for $name) is taken by group $holder on the base image; give $name another id in the role registry"
    groupadd --system --gid "$fixed" "$name"
  fi
  if id -u "$name" >/dev/null 2>&1; then
    [ "$(id -u "$name")" = "$fixed" ] ||
      die "user $name exists with uid $(id -u "$name"), not its fixed $fixed"
  else
    holder=$(getent passwd "$fixed" | cut -d: -f1 || true)
    [ -z "$holder" ] || die "uid $fixed (fixed for $name) is taken by user $holder on the base image; give $name another id in the role registry"
    useradd --system --uid "$fixed" --gid "$name" --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin "$name"
    log "created system user $name (uid and gid $fixed)"
  fi
  if [ -n "${2:-}" ]; then
    usermod --append --groups "$2" "$name"
  fi
}

# expect_version NAME COMMAND...: COMMAND's output must report NAME's pinned version.
expect_version() {
  local prefix version output
  prefix=$(component_prefix "$1")
  shift
  require_env "${prefix}_VERSION"
  local version_var="${prefix}_VERSION"
  version=${!version_var}
  output=$("$@" 2>&1) || die "$* failed: $output"
  if ! grep -qE "version v?${version//./\\.}([^0-9.]|$)" <<<"$output"; then
    die "$1 reports '$(head -n1 <<<"$output")', expected version $version"
  fi
  log "$1 is version $version"
}

# verify_units UNIT...: systemd's own checks (syntax, executables present, dependencies).
verify_units() {
  local unit paths=()
  for unit in "$@"; do
    paths+=("/etc/systemd/system/$unit")
  done
  systemd-analyze verify "${paths[@]}" || die "systemd-analyze verify failed for: $*"
  log "units verified: $*"
}

# render_with_sample_tags TAGS_JSON OUT_DIR: renders this role's configs into OUT_DIR with the
# baked agent and spec, exactly as at boot, but from sample tags instead of the instance's.
render_with_sample_tags() {
  local tags=$1 out=$2
  install -d -m 0755 "$out"
  /usr/local/bin/stack-agent render --role "$OBSTACK_ROLE" --tags-from "file:$tags" \
    --instance-id i-bakeselfcheck --root "$out" ||
    die "stack-agent could not render the $OBSTACK_ROLE configs from sample tags"
}
