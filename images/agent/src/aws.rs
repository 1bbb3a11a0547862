//! AWS SDK clients, configured once from the standard chain (environment, profile, IMDS)
//! and only when a source or secret actually needs them: a `file:` run never touches AWS.

use aws_config::{BehaviorVersion, SdkConfig};
use tokio::sync::OnceCell;

#[derive(Default)]
pub struct AwsConfig {
    sdk: OnceCell<SdkConfig>,
    ec2: OnceCell<aws_sdk_ec2::Client>,
    ssm: OnceCell<aws_sdk_ssm::Client>,
}

impl AwsConfig {
    async fn sdk(&self) -> &SdkConfig {
        self.sdk
            .get_or_init(|| aws_config::defaults(BehaviorVersion::latest()).load())
            .await
    }

    pub async fn ec2(&self) -> &aws_sdk_ec2::Client {
        let sdk = self.sdk().await;
        self.ec2
            .get_or_init(|| async { aws_sdk_ec2::Client::new(sdk) })
            .await
    }

    pub async fn ssm(&self) -> &aws_sdk_ssm::Client {
        let sdk = self.sdk().await;
        self.ssm
            .get_or_init(|| async { aws_sdk_ssm::Client::new(sdk) })
            .await
    }
}
