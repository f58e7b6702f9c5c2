"""A CloudFormation custom resource's answer: a PUT of a JSON document to
the pre-signed S3 URL of the request (``ResponseURL``).

Standard library only (no cfnresponse module in a zip-packaged function).
Inside a VPC the URL is reached through an S3 gateway endpoint or a NAT
gateway (infra/stacks/network.yaml).  A reason is cut to fit: CloudFormation
refuses a response body over 4 KiB.
"""
from __future__ import annotations

import json
import urllib.request
from typing import Any

REASON_LIMIT = 1000


def respond(event: dict[str, Any], status: str, data: dict[str, str], physical_id: str,
            reason: str = "", *, timeout: float = 10.0) -> None:
    """Send SUCCESS or FAILED for ``event``.  Raises OSError (urllib's
    URLError) when the URL cannot be reached: the function then fails and
    CloudFormation waits for its timeout, so the network must allow it."""
    body = json.dumps({
        "Status": status,
        "Reason": (reason or f"see the function's log, request {event.get('RequestId', '')}")[:REASON_LIMIT],
        "PhysicalResourceId": physical_id,
        "StackId": event["StackId"],
        "RequestId": event["RequestId"],
        "LogicalResourceId": event["LogicalResourceId"],
        "NoEcho": False,
        "Data": data,
    }).encode()
    # a pre-signed URL is signed for an empty Content-Type
    request = urllib.request.Request(event["ResponseURL"], data=body, method="PUT",
                                     headers={"Content-Type": "", "Content-Length": str(len(body))})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        reply.read()
