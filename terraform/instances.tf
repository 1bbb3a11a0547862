locals {
  # The roles that run as one aws_instance each: all four, or all but the app when it runs
  # as a fleet (fleet.tf).
  instance_roles = var.app_fleet ? setsubtract(local.roles, ["app"]) : local.roles

  # Which peer addresses each role reads from its own tags (images/<role>/role.toml). A fleet
  # has no single address: Prometheus finds its instances through EC2 service discovery
  # (the obstack:app-fleet-desired tag below says so), and they carry Loki's address as a
  # launch tag (fleet.tf).
  peer_tags = merge([
    for role, peers in {
      app        = ["loki"]
      prometheus = ["app", "loki", "grafana"]
      grafana    = ["prometheus", "loki"]
      } : {
      for peer in peers : "${role}_knows_${peer}" => { role = role, peer = peer }
      if contains(local.instance_roles, role) && contains(local.instance_roles, peer)
    }
  ]...)
}

resource "aws_instance" "role" {
  for_each = local.instance_roles

  ami                    = var.ami_ids[each.key]
  instance_type          = local.instance_types[each.key]
  subnet_id              = aws_subnet.public.id
  vpc_security_group_ids = [local.security_group_ids[each.key]]
  iam_instance_profile   = aws_iam_instance_profile.instance[each.key].name
  monitoring             = true
  ebs_optimized          = true
  #checkov:skip=CKV_AWS_88:The stack lives in one public subnet (no NAT): the public address is how operators reach the UIs, filtered by allowed_web_cidrs, and how the SSM agent reaches its endpoints.
  associate_public_ip_address = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "enabled"
  }

  root_block_device {
    volume_type           = "gp3"
    volume_size           = var.root_volume_size_gb
    encrypted             = true
    delete_on_termination = true
  }

  # A stateful role's data volume id is known before the instance (volumes.tf), so it is a
  # launch tag: the boot agent reads it at once and waits for that volume to be attached.
  tags = merge(
    {
      Name           = "${var.name}-${each.key}"
      "obstack:role" = each.key
    },
    contains(keys(aws_ebs_volume.data), each.key) ? { "obstack:data-volume" = aws_ebs_volume.data[each.key].id } : {},
    # With the fleet, Prometheus discovers the app instances (tag:obstack:role = app and its
    # deployment, from the default tags) and alerts when fewer than this many are up.
    var.app_fleet && each.key == "prometheus" ? { "obstack:app-fleet-desired" = tostring(var.app_desired) } : {},
    # Grafana served on HTTPS (grafana_https.tf): its agent sets root_url, cookie_secure and
    # HSTS from the name. A tag change re-renders grafana.ini; it never replaces the instance.
    local.grafana_https && each.key == "grafana" ? { "obstack:grafana-host-name" = var.grafana_host_name } : {},
  )

  # Prometheus' first discovery call must be allowed (it retries anyway, but a denied call
  # at boot is an alert for nothing). The SSM agent reaches its endpoints from the first
  # boot (a public address, no NAT): the subnet routes to the internet gateway first.
  depends_on = [aws_iam_role_policy.prometheus_discovers_app, aws_route.internet, aws_route_table_association.public]
}

# Peer addresses exist only after launch, so they are written as separate tags: no
# instance depends on another, and the boot agent waits (bounded) for the tags it needs.
resource "aws_ec2_tag" "peer" {
  for_each = local.peer_tags

  resource_id = aws_instance.role[each.value.role].id
  key         = "obstack:peer:${each.value.peer}"
  value       = aws_instance.role[each.value.peer].private_ip
}

# Grafana's boot agent reads the parameter as soon as this tag appears: the tag waits for the
# policy that lets Grafana read (and decrypt) it, or the first read is denied.
resource "aws_ec2_tag" "grafana_admin_password_param" {
  resource_id = aws_instance.role["grafana"].id
  key         = "obstack:grafana-admin-password-param"
  value       = aws_ssm_parameter.grafana_admin_password.name

  depends_on = [aws_iam_role_policy.grafana_reads_admin_password]
}
