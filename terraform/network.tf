locals {
  # The default route and the HTTPS egress to the AWS APIs (SSM) are the only places
  # that name "anywhere"; every other rule references a security group or a variable.
  any_ipv4 = "0.0.0.0/0"
  # Never used in a rule: the exposure preconditions (security.tf) refuse it with any_ipv4.
  any_ipv6 = "::/0"

  # The subnet lies inside the VPC when its prefix is at least as long and its address,
  # cut to the VPC's prefix, is the VPC's network address.
  public_subnet_inside_vpc = try(
    tonumber(split("/", var.public_subnet_cidr)[1]) >= tonumber(split("/", var.vpc_cidr)[1])
    && cidrhost("${split("/", var.public_subnet_cidr)[0]}/${split("/", var.vpc_cidr)[1]}", 0) == cidrhost(var.vpc_cidr, 0),
    false
  )

  # The same for the fleet's second subnet, which must also not overlap the first: two
  # blocks overlap when their addresses, cut to the shorter of their prefixes, are equal.
  second_public_subnet_inside_vpc = try(
    tonumber(split("/", var.second_public_subnet_cidr)[1]) >= tonumber(split("/", var.vpc_cidr)[1])
    && cidrhost("${split("/", var.second_public_subnet_cidr)[0]}/${split("/", var.vpc_cidr)[1]}", 0) == cidrhost(var.vpc_cidr, 0),
    false
  )
  public_subnets_disjoint = try(
    cidrhost("${split("/", var.public_subnet_cidr)[0]}/${min(tonumber(split("/", var.public_subnet_cidr)[1]), tonumber(split("/", var.second_public_subnet_cidr)[1]))}", 0)
    != cidrhost("${split("/", var.second_public_subnet_cidr)[0]}/${min(tonumber(split("/", var.public_subnet_cidr)[1]), tonumber(split("/", var.second_public_subnet_cidr)[1]))}", 0),
    false
  )
}

resource "aws_vpc" "main" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = {
    Name = var.name
  }
}

# Take over the VPC's default security group and leave it without any rule, so nothing
# launched into it by accident can talk to anything.
resource "aws_default_security_group" "closed" {
  vpc_id = aws_vpc.main.id

  tags = {
    Name = "${var.name}-default-closed"
  }
}

resource "aws_internet_gateway" "main" {
  vpc_id = aws_vpc.main.id

  tags = {
    Name = var.name
  }
}

resource "aws_subnet" "public" {
  vpc_id            = aws_vpc.main.id
  cidr_block        = var.public_subnet_cidr
  availability_zone = local.first_zone
  # Addresses are assigned per instance (instances.tf), never by default.
  map_public_ip_on_launch = false

  tags = {
    Name = "${var.name}-public"
  }

  lifecycle {
    # The zone is chosen once: a later change of the offerings (or of a stack created before
    # zones were chosen here) must not replace the subnet, its instances and data volumes.
    ignore_changes = [availability_zone]

    # Before 1.9, a variable's validation cannot see another variable: this is checked at plan.
    precondition {
      condition     = local.public_subnet_inside_vpc
      error_message = "public_subnet_cidr must lie inside vpc_cidr (same or longer prefix, same network bits)."
    }

    precondition {
      condition     = local.first_zone != null && contains(local.first_subnet_zones, coalesce(local.first_zone, "-"))
      error_message = "availability_zone must offer every instance type the stack launches there (${join(", ", distinct(values(local.instance_types)))}); zones that do: ${jsonencode(local.first_subnet_zones)}."
    }
  }
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.main.id

  tags = {
    Name = "${var.name}-public"
  }
}

resource "aws_route" "internet" {
  route_table_id         = aws_route_table.public.id
  destination_cidr_block = local.any_ipv4
  gateway_id             = aws_internet_gateway.main.id
}

resource "aws_route_table_association" "public" {
  subnet_id      = aws_subnet.public.id
  route_table_id = aws_route_table.public.id
}

# The subnets' zones: zones of the region that need no opting in (no Local or Wavelength
# Zones) and offer every instance type launched there. RunInstances fails in a zone that does
# not offer the type, and so does an Auto Scaling group's first create (it waits for its
# capacity and gives up on a failed launch). With the app fleet, an Application Load
# Balancer needs a second subnet in another zone, which the fleet spans too.
data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:Only used to choose the subnets' zones when they are created; the subnets ignore later changes of their zone, so a zone AWS adds never moves them.

  state = "available"

  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"]
  }
}

data "aws_ec2_instance_type_offerings" "stack" {
  location_type = "availability-zone"

  filter {
    name   = "instance-type"
    values = sort(distinct(values(local.instance_types)))
  }
}

locals {
  # Each role's instance type (roles not listed in var.instance_types run t3.small).
  instance_types = { for role in local.roles : role => lookup(var.instance_types, role, "t3.small") }

  # zone => the instance types it offers (of those the stack uses).
  types_by_zone = {
    for i, zone in data.aws_ec2_instance_type_offerings.stack.locations :
    zone => data.aws_ec2_instance_type_offerings.stack.instance_types[i]...
  }

  # The first subnet holds every single instance and, with the fleet, part of the app's; the
  # second only the app fleet's. Sorted, so that the choice is stable.
  first_subnet_zones = sort([
    for zone in data.aws_availability_zones.available.names : zone
    if length(setsubtract(values(local.instance_types), lookup(local.types_by_zone, zone, []))) == 0
  ])
  second_subnet_zones = sort([
    for zone in data.aws_availability_zones.available.names : zone
    if contains(lookup(local.types_by_zone, zone, []), local.instance_types["app"])
  ])

  # The operator's zones, or the first that fit (the second other than the first subnet's).
  first_zone = var.availability_zone != null ? var.availability_zone : try(local.first_subnet_zones[0], null)
  second_zone = (var.second_availability_zone != null ? var.second_availability_zone
  : try([for zone in local.second_subnet_zones : zone if zone != aws_subnet.public.availability_zone][0], null))
}

resource "aws_subnet" "second" {
  count = var.app_fleet ? 1 : 0

  vpc_id            = aws_vpc.main.id
  cidr_block        = var.second_public_subnet_cidr
  availability_zone = local.second_zone
  # Addresses are assigned per instance (the launch template), never by default.
  map_public_ip_on_launch = false

  tags = {
    Name = "${var.name}-public-2"
  }

  lifecycle {
    # The zone is chosen once: a zone AWS adds later must not replace the subnet (and with it
    # the load balancer's placement and the fleet's instances).
    ignore_changes = [availability_zone]

    precondition {
      condition     = local.second_public_subnet_inside_vpc && local.public_subnets_disjoint
      error_message = "second_public_subnet_cidr must lie inside vpc_cidr and must not overlap public_subnet_cidr."
    }

    precondition {
      condition     = local.second_zone != null && contains(local.second_subnet_zones, coalesce(local.second_zone, "-")) && local.second_zone != aws_subnet.public.availability_zone
      error_message = "The app fleet needs a second zone, other than the first subnet's, that offers the app's instance type (${local.instance_types["app"]}): second_availability_zone may be one of ${jsonencode([for zone in local.second_subnet_zones : zone if zone != aws_subnet.public.availability_zone])}."
    }
  }
}

resource "aws_route_table_association" "second" {
  count = var.app_fleet ? 1 : 0

  subnet_id      = aws_subnet.second[0].id
  route_table_id = aws_route_table.public.id
}

resource "aws_flow_log" "vpc" {
  count = var.enable_flow_logs ? 1 : 0

  vpc_id               = aws_vpc.main.id
  traffic_type         = "ALL"
  log_destination_type = "cloud-watch-logs"
  log_destination      = aws_cloudwatch_log_group.flow_logs[0].arn
  iam_role_arn         = aws_iam_role.flow_logs[0].arn

  tags = {
    Name = "${var.name}-flow-logs"
  }

  # The role is referenced above, its permissions are not: without this the flow log can be
  # created before the role may write, and its first deliveries fail.
  depends_on = [aws_iam_role_policy.flow_logs]
}

resource "aws_cloudwatch_log_group" "flow_logs" {
  count = var.enable_flow_logs ? 1 : 0

  name              = "/obstack/${var.name}/vpc-flow-logs"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.stack.arn
}

resource "aws_iam_role" "flow_logs" {
  count = var.enable_flow_logs ? 1 : 0

  name = "${var.name}-flow-logs"
  # Only flow logs of this account and region may use the role (AWS's advice against the
  # confused deputy, on its page on the flow-log IAM role). The flow log's id is not known
  # before it exists, hence the wildcard.
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "vpc-flow-logs.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = {
        StringEquals = {
          "aws:SourceAccount" = data.aws_caller_identity.current.account_id
        }
        ArnLike = {
          "aws:SourceArn" = "arn:${data.aws_partition.current.partition}:ec2:${var.region}:${data.aws_caller_identity.current.account_id}:vpc-flow-log/*"
        }
      }
    }]
  })
}

resource "aws_iam_role_policy" "flow_logs" {
  count = var.enable_flow_logs ? 1 : 0

  name = "write-flow-logs"
  role = aws_iam_role.flow_logs[0].id
  # The permissions AWS's page on the flow-log IAM role lists, each on the narrowest resource:
  # the log group is created here (no logs:CreateLogGroup); listing log groups has no
  # narrower resource than the account's and region's log groups.
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect   = "Allow"
        Action   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
        Resource = "${aws_cloudwatch_log_group.flow_logs[0].arn}:*"
      },
      {
        Effect   = "Allow"
        Action   = ["logs:DescribeLogGroups"]
        Resource = "arn:${data.aws_partition.current.partition}:logs:${var.region}:${data.aws_caller_identity.current.account_id}:log-group:*"
      },
    ]
  })
}
