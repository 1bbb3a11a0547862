//! Reads Grafana's admin password from SSM Parameter Store (a SecureString written by
//! Terraform), so the health checks can use Grafana's API. The value is never printed.

use anyhow::Context;

/// The decrypted value of the SecureString parameter `name` in `region`.
pub async fn read_parameter(region: &str, name: &str) -> anyhow::Result<String> {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_string()))
        .load()
        .await;
    let client = aws_sdk_ssm::Client::new(&config);
    let output = client
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .with_context(|| {
            format!("cannot read SSM parameter {name} (ssm:GetParameter, kms:Decrypt)")
        })?;
    output
        .parameter()
        .and_then(|p| p.value())
        .map(str::to_string)
        .with_context(|| format!("SSM parameter {name} has no value"))
}
