# The app as a fleet (var.app_fleet, the default): the app AMI launched by a launch template
# into an Auto Scaling group that spans the two public subnets, behind an internet-facing
# Application Load Balancer that health-checks /health. A new AMI is a new template version;
# the group's instance refresh then launches the new instances first and terminates the old
# ones only once the new ones pass the load balancer's health check.
#
# Prometheus finds the instances itself (EC2 service discovery on the tags below, with
# ec2:DescribeInstances granted in iam.tf): there is no single app address to tag.
# With var.app_fleet = false the app is one aws_instance (instances.tf), as before.

locals {
  # HTTPS when an ACM certificate is given; then plain HTTP only redirects to it.
  app_https = var.app_certificate_arn != null

  # People reach the app through the load balancer only when asked for: with its certificate
  # (HTTPS), or plain HTTP with expose_app. Otherwise the load balancer admits nobody from
  # outside (it still health-checks the fleet) and the app is reached with `cargo xtask open`.
  app_public = var.app_fleet && (var.expose_app || local.app_https)

  # The load balancer's HTTPS listener serves the app, Grafana (grafana_https.tf) or both;
  # port 80 forwards the app over plain HTTP only when expose_app asks for it without a
  # certificate, and otherwise redirects to HTTPS.
  lb_https          = var.app_fleet && (local.app_https || local.grafana_https)
  http_forwards     = !local.app_https && !(local.grafana_https && !var.expose_app)
  lb_web_ports      = concat(local.app_public || local.grafana_https ? [80] : [], local.lb_https ? [443] : [])
  https_certificate = local.app_https ? var.app_certificate_arn : var.grafana_certificate_arn

  # The load balancer's and target group's name: at most 32 letters, digits and hyphens, not
  # starting or ending with a hyphen nor starting with "internal-" (Elastic Load Balancing's
  # rules). The fixed "app-" prefix keeps "internal-" out whatever var.name is; var.name is
  # cut to fit, so a short hash of the whole name keeps two stacks whose names share their
  # first 21 characters apart (names are unique per account and region).
  lb_name = "app-${trim(substr(var.name, 0, 21), "-")}-${substr(sha256(var.name), 0, 6)}"

  # The tags every fleet instance (and its root volume) launches with. They are the boot
  # agent's only input, so they must be there at first boot: launch tags, not tags the group
  # propagates, and spelled out because the provider's default_tags do not reach instances
  # an Auto Scaling group launches. Loki's address is a launch tag here: a new Loki instance
  # makes a new template version, which the instance refresh rolls out.
  app_fleet_tags = {
    Name                 = "${var.name}-app"
    "obstack:role"       = "app"
    "obstack:deployment" = var.name
    "obstack:project"    = "obstack"
    "obstack:peer:loki"  = aws_instance.role["loki"].private_ip
  }
}

resource "aws_launch_template" "app" {
  count = var.app_fleet ? 1 : 0

  name                   = "${var.name}-app"
  description            = "obstack ${var.name}: the app fleet"
  image_id               = var.ami_ids["app"]
  instance_type          = local.instance_types["app"]
  ebs_optimized          = true
  update_default_version = true

  iam_instance_profile {
    name = aws_iam_instance_profile.instance["app"].name
  }

  monitoring {
    enabled = true
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "enabled"
  }

  # The AMI's root device (images/common/packer/image.pkr.hcl launch_block_device_mappings),
  # encrypted with the account's EBS key like the single instances' roots: no service keeps
  # data there, and a customer key would need a grant for Auto Scaling's service-linked role.
  block_device_mappings {
    device_name = "/dev/sda1"

    ebs {
      volume_type           = "gp3"
      volume_size           = var.root_volume_size_gb
      encrypted             = true
      delete_on_termination = true
    }
  }

  #checkov:skip=CKV_AWS_88:The stack lives in public subnets (no NAT): the public address is how the SSM agent and Promtail reach their endpoints; the app security group admits only the load balancer, Prometheus and allowed_web_cidrs when expose_app is set.
  network_interfaces {
    device_index                = 0
    associate_public_ip_address = true
    delete_on_termination       = true
    security_groups             = [aws_security_group.app.id]
  }

  # The provider's ignore_tags (versions.tf) does not apply here: tag_specifications are
  # sent and read as they are written (only aws: keys are ignored).
  tag_specifications {
    resource_type = "instance"
    tags          = local.app_fleet_tags
  }

  tag_specifications {
    resource_type = "volume"
    tags          = local.app_fleet_tags
  }
}

resource "aws_autoscaling_group" "app" {
  count = var.app_fleet ? 1 : 0

  name                = "${var.name}-app"
  min_size            = var.app_min
  max_size            = var.app_max
  desired_capacity    = var.app_desired
  vpc_zone_identifier = [aws_subnet.public.id, aws_subnet.second[0].id]
  target_group_arns   = [aws_lb_target_group.app[0].arn]

  # An instance whose app does not answer /health is replaced, not only one whose EC2 status
  # check fails; the grace period covers the boot agent's first render.
  health_check_type         = "ELB"
  health_check_grace_period = 300

  # A pinned version (not $Latest): a new one is what starts the instance refresh.
  launch_template {
    id      = aws_launch_template.app[0].id
    version = aws_launch_template.app[0].latest_version
  }

  # Launch before terminate: the group may double while every instance is replaced, and no
  # old instance goes before a new one passes the load balancer's health check.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 100
      max_healthy_percentage = 200
    }
  }

  # Only to tell the group apart; instances get theirs from the launch template.
  tag {
    key                 = "Name"
    value               = "${var.name}-app"
    propagate_at_launch = false
  }

  tag {
    key                 = "obstack:deployment"
    value               = var.name
    propagate_at_launch = false
  }

  tag {
    key                 = "obstack:project"
    value               = "obstack"
    propagate_at_launch = false
  }

  # The instances reach the SSM endpoints from their first boot (public addresses, no NAT):
  # the subnets route to the internet gateway before the group launches anything.
  depends_on = [aws_route.internet, aws_route_table_association.public, aws_route_table_association.second]

  lifecycle {
    # Before 1.9, a variable's validation cannot see another variable: this is checked at plan.
    precondition {
      condition     = var.app_min <= var.app_desired && var.app_desired <= var.app_max
      error_message = "The app fleet needs app_min <= app_desired <= app_max (Auto Scaling refuses a desired capacity outside the group's size)."
    }
  }
}

resource "aws_security_group" "alb" {
  count = var.app_fleet ? 1 : 0

  name        = "${var.name}-alb"
  description = "obstack load balancer in front of the app fleet"
  vpc_id      = aws_vpc.main.id

  lifecycle {
    precondition {
      condition     = length(local.lb_web_ports) == 0 || length(var.allowed_web_cidrs) > 0
      error_message = "A certificate (app_certificate_arn, grafana_certificate_arn) or expose_app publishes the load balancer to allowed_web_cidrs, which is empty: list the addresses that may reach it."
    }
  }
}

resource "aws_lb" "app" {
  count = var.app_fleet ? 1 : 0

  #checkov:skip=CKV_AWS_91:Access logs need a log bucket with an ELB delivery policy per region; the app logs every request to Loki through Promtail already.
  #checkov:skip=CKV_AWS_150:Deletion protection would make `cargo xtask destroy` of a try-out stack fail; the load balancer holds no data and is recreated by apply.
  #checkov:skip=CKV2_AWS_28:A WAF web ACL is a paid, policy-laden add-on outside this demo stack; the load balancer is reachable only from allowed_web_cidrs.
  #checkov:skip=CKV2_AWS_20:HTTP is redirected to HTTPS whenever a certificate is set (app_certificate_arn, grafana_certificate_arn); without one there is no HTTPS listener to redirect to and port 80 admits nobody unless expose_app asks for plain HTTP.
  name                       = local.lb_name
  internal                   = false
  load_balancer_type         = "application"
  security_groups            = [aws_security_group.alb[0].id]
  subnets                    = [aws_subnet.public.id, aws_subnet.second[0].id]
  drop_invalid_header_fields = true
  enable_deletion_protection = false

  # An internet-facing load balancer created before its subnets route to the internet
  # gateway fails (InvalidSubnet), and CreateLoadBalancer is not retried.
  depends_on = [aws_route.internet, aws_route_table_association.public, aws_route_table_association.second]

  lifecycle {
    # A load balancer needs 8 free addresses in each subnet, and AWS asks for /27 or larger;
    # the first subnet also holds the single instances and part of the fleet.
    precondition {
      condition     = try(tonumber(split("/", var.public_subnet_cidr)[1]) <= 27 && tonumber(split("/", var.second_public_subnet_cidr)[1]) <= 27, false)
      error_message = "With app_fleet, public_subnet_cidr and second_public_subnet_cidr must be /27 or larger: the load balancer needs 8 free addresses in each subnet."
    }
  }
}

resource "aws_lb_target_group" "app" {
  count = var.app_fleet ? 1 : 0

  #checkov:skip=CKV_AWS_378:The targets speak plain HTTP inside the VPC (the demo app has no TLS); TLS ends at the load balancer when app_certificate_arn is set.
  name                 = local.lb_name
  port                 = 5000
  protocol             = "HTTP"
  target_type          = "instance"
  vpc_id               = aws_vpc.main.id
  deregistration_delay = 30

  health_check {
    enabled             = true
    path                = "/health"
    port                = "traffic-port"
    protocol            = "HTTP"
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

# Port 80 forwards to the fleet, or with a certificate redirects (301) to HTTPS. It exists
# even when nobody may reach it: the fleet's target group must belong to a listener for the
# load balancer to health-check it (the Auto Scaling group replaces what fails).
resource "aws_lb_listener" "http" {
  count = var.app_fleet ? 1 : 0

  #checkov:skip=CKV_AWS_2:Without a certificate the stack has nothing to serve HTTPS with and this listener admits nobody unless expose_app asks for plain HTTP; with one, it only redirects to HTTPS.
  #checkov:skip=CKV_AWS_103:This is the plain-HTTP listener (TLS policy applies to the HTTPS one, aws_lb_listener.https).
  load_balancer_arn = aws_lb.app[0].arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type             = local.http_forwards ? "forward" : "redirect"
    target_group_arn = local.http_forwards ? aws_lb_target_group.app[0].arn : null

    dynamic "redirect" {
      for_each = local.http_forwards ? [] : ["https"]
      content {
        port        = "443"
        protocol    = "HTTPS"
        status_code = "HTTP_301"
      }
    }
  }
}

# HTTPS for the app (its certificate) and for Grafana (a host-name rule, grafana_https.tf).
# Without the app's certificate, requests for any other host get a 404.
resource "aws_lb_listener" "https" {
  count = local.lb_https ? 1 : 0

  load_balancer_arn = aws_lb.app[0].arn
  port              = 443
  protocol          = "HTTPS"
  # TLS 1.3 and 1.2 only, 1.2 with forward-secret AEAD ciphers only (Elastic Load Balancing's
  # current restricted policy, with post-quantum key exchange).
  ssl_policy      = "ELBSecurityPolicy-TLS13-1-2-Res-PQ-2025-09"
  certificate_arn = local.https_certificate

  default_action {
    type             = local.app_https ? "forward" : "fixed-response"
    target_group_arn = local.app_https ? aws_lb_target_group.app[0].arn : null

    dynamic "fixed_response" {
      for_each = local.app_https ? [] : ["not found"]
      content {
        content_type = "text/plain"
        message_body = "Not found"
        status_code  = "404"
      }
    }
  }
}

# People reach the load balancer from allowed_web_cidrs only, and only what they asked for:
# 443 with a certificate (80 then redirects), 80 alone for the app with expose_app; nothing by
# default.
resource "aws_vpc_security_group_ingress_rule" "alb_web" {
  for_each = {
    for pair in setproduct(var.app_fleet ? local.lb_web_ports : [], var.allowed_web_cidrs) :
    "${pair[0]}_from_${pair[1]}" => { port = pair[0], cidr = pair[1] }
  }

  security_group_id = aws_security_group.alb[0].id
  cidr_ipv4         = each.value.cidr
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  description       = "People reach the load balancer from an allowed_web_cidrs entry"
}

# The load balancer talks to nothing but the app (requests and health checks, port 5000)...
resource "aws_vpc_security_group_egress_rule" "alb_to_app" {
  count = var.app_fleet ? 1 : 0

  security_group_id            = aws_security_group.alb[0].id
  referenced_security_group_id = aws_security_group.app.id
  ip_protocol                  = "tcp"
  from_port                    = 5000
  to_port                      = 5000
  description                  = "The load balancer forwards to and health-checks the app"
}

# ...and the app takes them from the load balancer's group only (expose_app still means
# direct access to the instances, security.tf).
resource "aws_vpc_security_group_ingress_rule" "app_from_alb" {
  count = var.app_fleet ? 1 : 0

  security_group_id            = aws_security_group.app.id
  referenced_security_group_id = aws_security_group.alb[0].id
  ip_protocol                  = "tcp"
  from_port                    = 5000
  to_port                      = 5000
  description                  = "The load balancer forwards to and health-checks the app"
}
