locals {
  roles = toset(["app", "prometheus", "loki", "grafana"])

  # Every flow between the roles, by security group and never by address:
  # `from` opens an egress rule, `to` the matching ingress rule. `what` becomes both rules'
  # description, which EC2 limits to 255 of a-z A-Z 0-9, spaces and ._-:/()#,@[]+=&;{}!$*
  # (no apostrophe, no quote); xtask/tests/xtask/terraform_constraints.rs checks every one.
  peer_flows = merge(
    {
      prometheus_scrapes_app      = { from = "prometheus", to = "app", port = 5000, what = "Prometheus scrapes the demo app" }
      prometheus_scrapes_promtail = { from = "prometheus", to = "app", port = 9080, what = "Prometheus scrapes Promtail" }
      prometheus_scrapes_loki     = { from = "prometheus", to = "loki", port = 3100, what = "Prometheus scrapes Loki" }
      prometheus_scrapes_grafana  = { from = "prometheus", to = "grafana", port = 3000, what = "Prometheus scrapes Grafana" }
      promtail_pushes_to_loki     = { from = "app", to = "loki", port = 3100, what = "Promtail pushes the app logs to Loki" }
      grafana_queries_prometheus  = { from = "grafana", to = "prometheus", port = 9090, what = "Grafana queries Prometheus" }
      grafana_queries_loki        = { from = "grafana", to = "loki", port = 3100, what = "Grafana queries Loki" }
      grafana_queries_alerts      = { from = "grafana", to = "prometheus", port = 9093, what = "Grafana queries Alertmanager" }
    },
    {
      for role in local.roles : "prometheus_scrapes_${role}_node_exporter" => {
        from = "prometheus", to = role, port = 9100, what = "Prometheus scrapes node_exporter on ${role}"
      }
    },
  )

  # The services whose own port an expose_* variable opens to allowed_web_cidrs; none by
  # default. People reach every UI through a Session Manager tunnel (`cargo xtask open`), and
  # Grafana through the load balancer's HTTPS listener when it has a certificate
  # (grafana_https.tf), never on its own port. Alertmanager's rule is in alerting.tf.
  web_ports = merge(
    var.expose_prometheus ? { prometheus = 9090 } : {},
    var.expose_loki ? { loki = 3100 } : {},
    var.expose_app ? { app = 5000 } : {},
  )

  web_rules = {
    for pair in setproduct(keys(local.web_ports), var.allowed_web_cidrs) :
    "${pair[0]}_from_${pair[1]}" => { role = pair[0], cidr = pair[1], port = local.web_ports[pair[0]] }
  }

  # Which role's group the expose_* variables open to allowed_web_cidrs. Such a group refuses
  # to be opened to nobody (an empty list) or to the whole internet: none of these services
  # asks for a password.
  exposed_groups = {
    app        = var.expose_app
    prometheus = var.expose_prometheus || var.expose_alertmanager
    loki       = var.expose_loki
  }
  web_cidrs_usable = (
    length(var.allowed_web_cidrs) > 0
    && !anytrue([for cidr in var.allowed_web_cidrs : contains([local.any_ipv4, local.any_ipv6], cidr)])
  )

  security_group_ids = {
    app        = aws_security_group.app.id
    prometheus = aws_security_group.prometheus.id
    loki       = aws_security_group.loki.id
    grafana    = aws_security_group.grafana.id
  }
}

resource "aws_security_group" "app" {
  name        = "${var.name}-app"
  description = "obstack demo app with Promtail and node_exporter"
  vpc_id      = aws_vpc.main.id

  lifecycle {
    precondition {
      condition     = !local.exposed_groups["app"] || local.web_cidrs_usable
      error_message = "expose_app opens an unauthenticated service to allowed_web_cidrs: list your own addresses there (not empty, never the whole internet), or leave it off and use `cargo xtask open`."
    }
  }
}

resource "aws_security_group" "prometheus" {
  name        = "${var.name}-prometheus"
  description = "obstack Prometheus"
  vpc_id      = aws_vpc.main.id

  lifecycle {
    precondition {
      condition     = !local.exposed_groups["prometheus"] || local.web_cidrs_usable
      error_message = "expose_prometheus or expose_alertmanager opens an unauthenticated service to allowed_web_cidrs: list your own addresses there (not empty, never the whole internet), or leave it off and use `cargo xtask open`."
    }
  }
}

resource "aws_security_group" "loki" {
  name        = "${var.name}-loki"
  description = "obstack Loki"
  vpc_id      = aws_vpc.main.id

  lifecycle {
    precondition {
      condition     = !local.exposed_groups["loki"] || local.web_cidrs_usable
      error_message = "expose_loki opens an unauthenticated service to allowed_web_cidrs: list your own addresses there (not empty, never the whole internet), or leave it off and use `cargo xtask open`."
    }
  }
}

resource "aws_security_group" "grafana" {
  name        = "${var.name}-grafana"
  description = "obstack Grafana"
  vpc_id      = aws_vpc.main.id

  # Grafana's HTTPS URL (grafana_https.tf). Before 1.9 a variable's validation cannot see
  # another variable: these are checked at plan.
  lifecycle {
    precondition {
      condition     = (var.grafana_certificate_arn == null) == (var.grafana_host_name == null)
      error_message = "grafana_certificate_arn and grafana_host_name go together: the certificate must cover the host name Grafana is served at."
    }

    precondition {
      condition     = var.grafana_certificate_arn == null || var.app_fleet
      error_message = "Grafana's HTTPS URL is served by the app fleet's load balancer: set app_fleet = true, or leave grafana_certificate_arn unset and use `cargo xtask open grafana`."
    }
  }
}

resource "aws_vpc_security_group_ingress_rule" "peer" {
  for_each = local.peer_flows

  security_group_id            = local.security_group_ids[each.value.to]
  referenced_security_group_id = local.security_group_ids[each.value.from]
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  description                  = each.value.what
}

resource "aws_vpc_security_group_egress_rule" "peer" {
  for_each = local.peer_flows

  security_group_id            = local.security_group_ids[each.value.from]
  referenced_security_group_id = local.security_group_ids[each.value.to]
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  description                  = each.value.what
}

resource "aws_vpc_security_group_ingress_rule" "web" {
  for_each = local.web_rules

  security_group_id = local.security_group_ids[each.value.role]
  cidr_ipv4         = each.value.cidr
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  description       = "Operators reach ${each.value.role} from an allowed_web_cidrs entry"
}

# The SSM agent (Session Manager, and Grafana's password parameter) talks HTTPS to the
# regional AWS endpoints; nothing else leaves the VPC.
resource "aws_vpc_security_group_egress_rule" "aws_apis" {
  for_each = local.security_group_ids

  security_group_id = each.value
  cidr_ipv4         = local.any_ipv4
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  description       = "HTTPS to the AWS APIs (SSM)"
}
