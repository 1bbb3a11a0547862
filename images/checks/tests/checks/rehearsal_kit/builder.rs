//! What a freshly booted builder instance has that a debootstrap root does not, set up before
//! the provisioners run: Ubuntu's default user with passwordless sudo (cloud-init makes it),
//! Packer's temporary SSH key, SSH host keys, a finished cloud-init run and its state, shell
//! history, a live journal, and trust in the rehearsal's download site. Cleanup must remove
//! the identity and access parts and keep the journal; [`super::checks`] proves it.

use std::path::Path;

use super::root::{chmod, describe, Root};
use super::SSH_USER;

/// Packer's temporary key pair's public half, as it lands in authorized_keys.
pub const PACKER_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIRehearsalRehearsalRehearsalRehearsal packer_6571a2b3";

/// A stand-in for journald's live journal file, with bytes the rehearsal can compare.
pub const JOURNAL_BYTES: &[u8] = b"LPKSHHRH stand-in for a live journal file";

const INSTANCE_ID: &str = "i-0rehearsal0000000";

/// Prepares `root` as a booted builder that trusts `ca_pem`. Returns the live journal file's
/// path inside the root.
pub fn prepare(root: &Root, ca_pem: &[u8]) -> String {
    let machine_id = std::fs::read_to_string(root.join("/etc/machine-id")).unwrap();
    let machine_id = machine_id.trim();
    assert!(
        !machine_id.is_empty(),
        "the base root has no machine-id: the cleanup check would prove nothing"
    );
    let journal = format!("/var/log/journal/{machine_id}/system.journal");

    std::fs::write(
        root.join("/usr/local/share/ca-certificates/obstack-rehearsal.crt"),
        ca_pem,
    )
    .unwrap();

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let stage = |offset: u64| {
        format!(
            r#"{{"start": {}, "finished": {}, "errors": []}}"#,
            now + offset,
            now + offset + 1
        )
    };
    let status = format!(
        r#"{{"v1": {{"datasource": "DataSourceEc2Local", "stage": null, "init-local": {}, "init": {}, "modules-config": {}, "modules-final": {}}}}}"#,
        stage(0),
        stage(2),
        stage(4),
        stage(6)
    );

    let script = format!(
        r#"set -euo pipefail
# Ubuntu's default user, as cloud-init creates it on the first boot.
useradd --create-home --shell /bin/bash --user-group {SSH_USER}
printf '%s ALL=(ALL) NOPASSWD:ALL\n' {SSH_USER} >/etc/sudoers.d/90-cloud-init-users
chmod 0440 /etc/sudoers.d/90-cloud-init-users
install -d -m 0700 -o {SSH_USER} -g {SSH_USER} /home/{SSH_USER}/.ssh
printf '%s\n' '{PACKER_KEY}' >/home/{SSH_USER}/.ssh/authorized_keys
chown {SSH_USER}:{SSH_USER} /home/{SSH_USER}/.ssh/authorized_keys
chmod 0600 /home/{SSH_USER}/.ssh/authorized_keys
echo 'sudo -i' >/home/{SSH_USER}/.bash_history
echo 'cat /etc/shadow' >/root/.bash_history

# The instance's hostname resolves (cloud-init's manage_etc_hosts), so sudo does not complain.
printf '127.0.1.1 %s\n' "$(cat /proc/sys/kernel/hostname)" >>/etc/hosts

# Host keys, as the first boot generates them.
install -d -m 0755 /etc/ssh
for type in rsa ecdsa ed25519; do
  echo "stand-in $type host key" >/etc/ssh/ssh_host_${{type}}_key
  chmod 0600 /etc/ssh/ssh_host_${{type}}_key
  echo "ssh-$type stand-in host key" >/etc/ssh/ssh_host_${{type}}_key.pub
done

# A finished cloud-init boot: its run state (what `status --wait` reads) and instance state.
install -d -m 0755 /run/cloud-init /var/lib/cloud/instances/{INSTANCE_ID}/sem /var/lib/cloud/data
printf '%s\n' '{status}' >/run/cloud-init/status.json
printf '%s\n' '{{"v1": {{"datasource": "DataSourceEc2Local", "errors": []}}}}' >/run/cloud-init/result.json
echo {INSTANCE_ID} >/var/lib/cloud/data/instance-id
date >/var/lib/cloud/instances/{INSTANCE_ID}/boot-finished
echo '{{"ec2": "metadata"}}' >/var/lib/cloud/instances/{INSTANCE_ID}/obj.pkl
ln -sfn /var/lib/cloud/instances/{INSTANCE_ID} /var/lib/cloud/instance
echo 'Cloud-init v. 24.4 finished' >/var/log/cloud-init.log
echo 'ci-info: no authorized SSH keys fingerprints found' >/var/log/cloud-init-output.log

# The journal journald keeps writing; cleanup must leave its live file whole.
install -d -m 2755 -g systemd-journal /var/log/journal/{machine_id}
printf '%s' '{journal_bytes}' >{journal}
chmod 0640 {journal}

update-ca-certificates >/dev/null
"#,
        journal_bytes = String::from_utf8_lossy(JOURNAL_BYTES),
    );
    let output = root.chroot().run_root(&script, &[]);
    assert!(
        output.status.success(),
        "preparing the rehearsal root as a booted builder:\n{}",
        describe(&output)
    );
    chmod(&root.join(&journal), 0o640);
    journal
}

/// `user`'s uid and gid in `root`.
pub fn ids(root: &Root, user: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string(root.join("/etc/passwd")).unwrap();
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields[0] == user)
        .map(|fields| (fields[2].parse().unwrap(), fields[3].parse().unwrap()))
        .unwrap_or_else(|| panic!("no user {user} in {}", root.path().display()))
}

/// Whether `path` (inside the root) exists, without following a final symlink.
pub fn exists(root: &Root, path: &str) -> bool {
    Path::new(&root.join(path)).symlink_metadata().is_ok()
}
