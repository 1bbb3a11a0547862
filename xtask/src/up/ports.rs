//! The AMIs' ports are fixed, so a port already taken (a system Prometheus, a stack from an
//! earlier `up --detach`) is found before anything starts, with what to do about it.

use std::net::{Ipv4Addr, TcpListener};

/// Fails with a one-line explanation when 127.0.0.1:`port` cannot be bound.
pub fn check_free(component: &str, port: u16) -> anyhow::Result<()> {
    match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
        Ok(_listener) => Ok(()),
        Err(error) => anyhow::bail!(
            "port {port} on 127.0.0.1 is taken ({error}), so {component} cannot start: stop \
             whatever listens there (`ss -ltnp 'sport = :{port}'` names it; a system service \
             such as Debian's prometheus: `systemctl stop {component}`; a detached stack: \
             `cargo xtask down`)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_names_the_component_the_port_and_the_fix() {
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let error = check_free("prometheus", port).unwrap_err().to_string();
        assert!(error.contains(&format!("port {port}")), "{error}");
        assert!(error.contains("prometheus cannot start"), "{error}");
        assert!(error.contains("cargo xtask down"), "{error}");
        assert!(!error.contains('\n'));
        drop(taken);
        check_free("prometheus", port).unwrap();
    }
}
