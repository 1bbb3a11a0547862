"""moto_server enforcing IAM as AWS would for the calls obstack makes.

Started by testkit::Moto::start_enforcing with INITIAL_NO_AUTH_ACTION_COUNT set (the first
calls create the users and their keys; every later one is checked against the policies of
the user whose keys signed it). moto alone checks every SSM call against the resource "*",
so a statement naming parameters never matches; here, as in AWS:

- an SSM parameter call is checked against the parameter's ARN (GetParametersByPath against
  the path's, GetParameters against each name's, tag calls against the tagged parameter's);
- PutParameter with tags also needs ssm:AddTagsToResource on the parameter, as AWS asks;
- a refusal names the action and the resource, as AWS's message does, in the service's own
  error format (EC2's XML `UnauthorizedOperation`, SSM's JSON `AccessDeniedException`), so
  the SDKs show it;
- the signature is not recomputed: moto rebuilds a form body from its parsed fields, which
  re-encodes a space as `+` where the SDK sent `%20` (EC2 tag values with spaces then fail).
  The access key must still be a user's, or the call is refused (AuthFailure).

Every decision (user, action, resource, allowed) is appended to the JSON-lines file
OBSTACK_MOTO_IAM_LOG, so a test can compare what a command called with what a policy allows.
Conditions are evaluated as moto does (StringEquals on the keys it knows; others pass).

Usage: python3 moto_iam.py -H 127.0.0.1 -p PORT
"""

import json
import os
import sys

from xml.sax.saxutils import escape

try:
    # What moto's server loads anyway; the IAM and SSM modules are patched on first use, so the
    # server answers as soon as a plain moto_server would.
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.core.responses import BaseResponse
    from moto.server import main
except ImportError as error:
    sys.exit(f"moto is not installed for {sys.executable} ({error}): pip install 'moto[server]'")

LOG = os.environ["OBSTACK_MOTO_IAM_LOG"]

# SSM actions on one parameter, and the request field naming it.
PARAMETER_FIELD = {
    "DeleteParameter": "Name",
    "GetParameter": "Name",
    "GetParameterHistory": "Name",
    "GetParametersByPath": "Path",
    "LabelParameterVersion": "Name",
    "PutParameter": "Name",
    "UnlabelParameterVersion": "Name",
}
TAG_ACTIONS = {"AddTagsToResource", "ListTagsForResource", "RemoveTagsFromResource"}
# Services speaking AWS's JSON protocol: their errors are JSON documents.
JSON_SERVICES = {"kms", "logs", "ssm"}


def log(entry):
    with open(LOG, "a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")


def principal(request):
    key = getattr(request, "_access_key", None)
    return getattr(key, "_owner_user_name", None) or getattr(key, "_owner_role_name", "?")


PATCHED = False


def patch_access_control():
    """moto's IAM check, logged and worded as AWS words it; the key checked, not the signature."""
    global PATCHED, access_control, JsonRESTError
    if PATCHED:
        return
    from moto.core.exceptions import AccessDeniedError, JsonRESTError, _RESTError
    from moto.iam import access_control

    class UnauthorizedOperation(_RESTError):
        """EC2's refusal, in EC2's own error document (the SDKs parse no other for EC2)."""

        code = 403

        def __init__(self, message):
            super().__init__("UnauthorizedOperation", message)
            self.description = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
                f"<Code>UnauthorizedOperation</Code><Message>{escape(message)}</Message>"
                "</Error></Errors><RequestID>moto-iam</RequestID></Response>"
            )

    class AccessDeniedException(JsonRESTError):
        """A JSON service's refusal. The services model the member as `Message` (the SDKs read
        the modelled exception by it), moto writes `message`: both are sent."""

        def __init__(self, message):
            super().__init__("AccessDeniedException", message)
            self.description = json.dumps(
                {"__type": "AccessDeniedException", "message": message, "Message": message}
            )

    check = access_control.IAMRequest.check_action_permitted

    def check_and_log(self, resource):
        entry = {"user": principal(self), "action": self._action, "resource": resource}
        try:
            check(self, resource)
        except AccessDeniedError:
            log({**entry, "allowed": False})
            reason = (
                f"{self._action} on resource: {resource} because no identity-based "
                f"policy allows the {self._action} action"
            )
            message = f"User: {self._access_key.arn} is not authorized to perform: {reason}"
            if self._service == "ec2":
                raise UnauthorizedOperation(
                    f"You are not authorized to perform this operation. {message}"
                ) from None
            if self._service in JSON_SERVICES:
                raise AccessDeniedException(message) from None
            raise AccessDeniedError(user_arn=self._access_key.arn, action=reason) from None
        log({**entry, "allowed": True})

    access_control.IAMRequest.check_action_permitted = check_and_log
    # See the module's docstring: the key is checked when the request is built, not the signature.
    access_control.IAMRequest.check_signature = lambda self: None
    PATCHED = True


def parameter_arn(response, name):
    name = name if name.startswith("/") else "/" + name
    return f"arn:aws:ssm:{response.region}:{response.current_account}:parameter{name}"


def ssm_checks(response):
    """(action, resource) pairs one SSM request needs, as AWS authorizes it."""
    action = response._get_action()
    if action in PARAMETER_FIELD and response._get_param(PARAMETER_FIELD[action]):
        arn = parameter_arn(response, response._get_param(PARAMETER_FIELD[action]))
        checks = [(action, arn)]
        if action == "PutParameter" and response._get_param("Tags"):
            checks.append(("AddTagsToResource", arn))
        return checks
    if action == "GetParameters":
        return [(action, parameter_arn(response, n)) for n in response._get_param("Names") or []]
    if action in TAG_ACTIONS and response._get_param("ResourceType") == "Parameter":
        return [(action, parameter_arn(response, response._get_param("ResourceId")))]
    return [(action, "*")]


def authorize_ssm(self, resource="*"):
    """The SSM request's own check(s), in place of moto's single check against "*"."""
    if ActionAuthenticatorMixin.request_count < settings.INITIAL_NO_AUTH_ACTION_COUNT:
        ActionAuthenticatorMixin.request_count += 1
        return
    from urllib.parse import urlparse

    url = urlparse(self.uri)
    path = url.path + ("?" + url.query if url.query else "")
    for action, arn in ssm_checks(self):
        request = access_control.IAMRequest(
            account_id=self.current_account,
            method=self.method,
            path=path,
            data=self.data,
            body=self.raw_body,
            headers=self.headers,
            action=action,
        )
        request.check_signature()
        try:
            request.check_action_permitted(arn)
        except JsonRESTError:
            # moto answers a refusal without a content type; the SDKs read the error
            # document of a JSON service only when it says it is one.
            self.response_headers["Content-Type"] = "application/x-amz-json-1.1"
            raise


_authorize = BaseResponse._authenticate_and_authorize_normal_action


def authorize(self, resource="*"):
    """Every service's check, with the patches above; SSM's by the parameters it names."""
    patch_access_control()
    if getattr(self, "service_name", None) == "ssm":
        return authorize_ssm(self, resource)
    return _authorize(self, resource)


BaseResponse._authenticate_and_authorize_normal_action = authorize

if __name__ == "__main__":
    main(sys.argv[1:])
