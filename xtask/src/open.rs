//! `cargo xtask open SERVICE`: a Session Manager tunnel from 127.0.0.1 (the service's own port
//! when it is free, else a free one, or `--port`) to one
//! of the stack's UIs, in the foreground until Ctrl-C. The instance is found by the stack's
//! tags; nothing needs an open port or a public address allow-listed.

use anyhow::Context;

use crate::cli::OpenArgs;
use crate::roles::{Registry, Role, Service};
use crate::tunnel::{find, interrupt, Ending, Forward, LocalPort, Tools, Tunnel};

/// How long the session may take to start listening.
const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub fn run(args: OpenArgs) -> anyhow::Result<()> {
    let registry = Registry::load_default()?;
    let (role, service) = ui(&registry, &args.service)?;
    // Before any AWS call: without them nothing can be opened.
    let tools = Tools::on_path()?;
    let stack = &args.stack.stack;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let client = runtime.block_on(crate::ami::ec2_client(args.stack.region.as_deref()))?;
    let region = client
        .config()
        .region()
        .map(|r| r.to_string())
        .context("no AWS region configured: pass --region, or set AWS_REGION")?;
    let instances = runtime.block_on(find::running(&client, stack, &role.name))?;
    let instance = find::choose(&instances, args.instance.as_deref(), stack, &role.name)
        .map_err(anyhow::Error::msg)?;
    let forward = Forward {
        service: service.name.clone(),
        instance_id: instance.id.clone(),
        remote_port: service.port,
        region: region.clone(),
    };
    // Ctrl-C is how this command ends: it closes the tunnel and returns.
    interrupt::hold();
    // The service's own port when it is free: the address people know (and Grafana's, the
    // one alert notifications link to when it has no public name).
    let local = match args.port {
        Some(port) => LocalPort::Exactly(port),
        None => LocalPort::Preferably(service.port),
    };
    let tunnel = Tunnel::open_on(&tools, &forward, local, OPEN_TIMEOUT)?;
    eprintln!(
        "{} of the stack {stack} ({}, {region}) answers at:",
        service.name, instance.id
    );
    println!("{}", tunnel.url());
    if let Some(parameter) = instance
        .tags
        .get(stack_agent::tags::GRAFANA_ADMIN_PASSWORD_PARAM)
    {
        eprintln!(
            "Log in as `{}`; the password is printed by:\n  {}",
            crate::deploy::GRAFANA_ADMIN_USER,
            password_command(&region, parameter)
        );
    }
    if let Some(host) = instance.tags.get(stack_agent::tags::GRAFANA_HOST_NAME) {
        eprintln!("(Its HTTPS address is https://{host}/.)");
    }
    eprintln!("Press Ctrl-C to close the tunnel.");
    match tunnel.wait() {
        Ending::Interrupted => {
            eprintln!("tunnel closed");
            Ok(())
        }
        Ending::SessionEnded(reason) => anyhow::bail!(
            "the Session Manager session to {} ended: {reason}; run the command again",
            forward.describe()
        ),
    }
}

/// The role and service a name on the command line means: a role's own service (the app,
/// Promtail, Prometheus, Alertmanager, Loki, Grafana), not the ones every instance runs.
fn ui<'a>(registry: &'a Registry, name: &str) -> anyhow::Result<(&'a Role, &'a Service)> {
    let services: Vec<(&Role, &Service)> = registry
        .roles()
        .iter()
        .flat_map(|role| role.services.iter().map(move |service| (role, service)))
        .collect();
    services
        .iter()
        .find(|(_, service)| service.name == name)
        .copied()
        .with_context(|| {
            let names: Vec<&str> = services.iter().map(|(_, s)| s.name.as_str()).collect();
            format!(
                "`{name}` is not a UI of the stack; open one of: {}",
                names.join(", ")
            )
        })
}

/// The command that prints the SecureString `parameter` (Grafana's admin password).
pub fn password_command(region: &str, parameter: &str) -> String {
    crate::cmd::Cmd::new(
        "aws",
        [
            "ssm",
            "get-parameter",
            "--region",
            region,
            "--with-decryption",
            "--name",
            parameter,
            "--query",
            "Parameter.Value",
            "--output",
            "text",
        ],
    )
    .line()
    .to_string()
}

/// What a person opens for `service`: its public URL, or the tunnel command.
pub fn how_to_reach(service: &str, public_url: Option<&String>) -> String {
    match public_url {
        Some(url) => url.clone(),
        None => format!("cargo xtask open {service}"),
    }
}

/// Every UI `open` accepts, in the registry's order.
pub fn ui_names(registry: &Registry) -> Vec<String> {
    registry
        .roles()
        .iter()
        .flat_map(|role| role.services.iter().map(|s| s.name.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ui_is_a_roles_own_service_and_anything_else_lists_them() {
        let registry = Registry::load_default().unwrap();
        let (role, service) = ui(&registry, "alertmanager").unwrap();
        assert_eq!((role.name.as_str(), service.port), ("prometheus", 9093));
        let error = ui(&registry, "node_exporter").unwrap_err().to_string();
        assert!(error.contains("not a UI of the stack"), "{error}");
        for name in ["grafana", "prometheus", "alertmanager", "loki", "app"] {
            assert!(error.contains(name), "{error}");
            assert!(ui_names(&registry).contains(&name.to_string()));
        }
    }

    #[test]
    fn the_password_command_reads_the_named_parameter_decrypted() {
        assert_eq!(
            password_command("eu-west-1", "/obstack/obstack/grafana/admin-password"),
            "aws ssm get-parameter --region eu-west-1 --with-decryption --name \
             /obstack/obstack/grafana/admin-password --query Parameter.Value --output text"
        );
    }
}
