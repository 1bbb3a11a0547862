# Grafana on HTTPS, for people who want a URL (grafana_certificate_arn + grafana_host_name):
# the app fleet's load balancer serves https://<grafana_host_name> with that certificate (a
# host-name rule on its HTTPS listener, Grafana's own target group checking /api/health),
# redirects plain HTTP for that name, and is the only thing outside the VPC Grafana's group
# admits. Grafana's agent learns the name from a tag and sets root_url, cookie_secure and
# HSTS (images/grafana/templates/grafana.ini.j2). Without a certificate Grafana has no
# listener on the internet at all: `cargo xtask open grafana`.

locals {
  # Only through the fleet's load balancer; a certificate without the fleet is refused by
  # the precondition on Grafana's security group (security.tf).
  grafana_https = var.app_fleet && var.grafana_certificate_arn != null

  # At most 32 letters, digits and hyphens, not starting or ending with a hyphen (Elastic
  # Load Balancing's rules); the fixed prefix keeps "internal-" out.
  grafana_target_group_name = "grafana-${trim(substr(var.name, 0, 24), "-")}"
}

resource "aws_lb_target_group" "grafana" {
  count = local.grafana_https ? 1 : 0

  #checkov:skip=CKV_AWS_378:Grafana speaks plain HTTP inside the VPC (its port admits only the load balancer and Prometheus); TLS ends at the load balancer with grafana_certificate_arn.
  name                 = local.grafana_target_group_name
  port                 = 3000
  protocol             = "HTTP"
  target_type          = "instance"
  vpc_id               = aws_vpc.main.id
  deregistration_delay = 30

  health_check {
    enabled             = true
    path                = "/api/health"
    port                = "traffic-port"
    protocol            = "HTTP"
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

resource "aws_lb_target_group_attachment" "grafana" {
  count = local.grafana_https ? 1 : 0

  target_group_arn = aws_lb_target_group.grafana[0].arn
  target_id        = aws_instance.role["grafana"].id
  port             = 3000
}

# Grafana's name on 443 goes to Grafana; everything else keeps the listener's default action.
resource "aws_lb_listener_rule" "grafana_https" {
  count = local.grafana_https ? 1 : 0

  listener_arn = aws_lb_listener.https[0].arn
  priority     = 10

  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.grafana[0].arn
  }

  condition {
    host_header {
      values = [var.grafana_host_name]
    }
  }
}

# Plain HTTP for Grafana's name is redirected (301) to HTTPS even when port 80 forwards the
# app (expose_app without the app's certificate).
resource "aws_lb_listener_rule" "grafana_http_redirect" {
  count = local.grafana_https ? 1 : 0

  listener_arn = aws_lb_listener.http[0].arn
  priority     = 10

  action {
    type = "redirect"

    redirect {
      port        = "443"
      protocol    = "HTTPS"
      status_code = "HTTP_301"
    }
  }

  condition {
    host_header {
      values = [var.grafana_host_name]
    }
  }
}

# With the app's certificate as the listener's default, Grafana's is added for its name (SNI).
resource "aws_lb_listener_certificate" "grafana" {
  count = local.grafana_https && local.app_https && var.grafana_certificate_arn != var.app_certificate_arn ? 1 : 0

  listener_arn    = aws_lb_listener.https[0].arn
  certificate_arn = var.grafana_certificate_arn
}

# The load balancer reaches Grafana's port (requests and health checks), and Grafana's group
# admits it: besides Prometheus' scrape, the only way into Grafana.
resource "aws_vpc_security_group_egress_rule" "alb_to_grafana" {
  count = local.grafana_https ? 1 : 0

  security_group_id            = aws_security_group.alb[0].id
  referenced_security_group_id = aws_security_group.grafana.id
  ip_protocol                  = "tcp"
  from_port                    = 3000
  to_port                      = 3000
  description                  = "The load balancer forwards to and health-checks Grafana"
}

resource "aws_vpc_security_group_ingress_rule" "grafana_from_alb" {
  count = local.grafana_https ? 1 : 0

  security_group_id            = aws_security_group.grafana.id
  referenced_security_group_id = aws_security_group.alb[0].id
  ip_protocol                  = "tcp"
  from_port                    = 3000
  to_port                      = 3000
  description                  = "The load balancer forwards to and health-checks Grafana"
}
