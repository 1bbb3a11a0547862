# For modern Packer only: `packer init images/plugins.pkr.hcl` installs the Amazon plugin the
# role templates use. It lives apart from the templates because Packer 1.6.6 (Debian's, used
# by the test suite) has the amazon builder built in and rejects a `required_plugins` block.
packer {
  required_version = ">= 1.6.6"
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.3.0, < 2.0.0"
    }
  }
}
