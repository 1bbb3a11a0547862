# For modern Packer only: `packer init images/plugins.pkr.hcl` installs the Amazon plugin the
# role templates use. It lives apart from the templates because Packer 1.6.6 (Debian's, used
# by the test suite) has the amazon builder built in and rejects a `required_plugins` block.
#
# The plugin is a bake input (label `packer-plugins` of the input hash): one exact version,
# so every AMI says which builder made it. Since 1.3.10 the plugin is published only on
# releases.hashicorp.com, where Packer fetches plugins from 1.14.0 on; an older Packer would
# quietly fall back to 1.3.9 from GitHub, hence the required_version.
packer {
  required_version = ">= 1.14.0"
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = "= 1.8.0"
    }
  }
}
