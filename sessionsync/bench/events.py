"""Lambda events as AWS delivers them: API Gateway REST (v1) proxy, TOKEN authorizer, SQS, schedule.

Kept free of imports beyond the standard library: the cold-start child
process builds nothing itself (the parent passes it a ready event), but the
warm-handler and consumer sections use these to feed ``app`` in-process.
"""
from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Sequence
from typing import Any

from chalicelib.domain.keys import FULL_ACCESS

API_ID = "a1b2c3d4e5"
ACCOUNT = "123456789012"
REGION = "us-east-1"
STAGE = "prod"


class LambdaContext:
    """The attributes of the Lambda runtime's context object that code reads."""

    function_name = "sessionsync-prod"
    function_version = "$LATEST"
    invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:sessionsync-prod"
    memory_limit_in_mb = 1024
    log_group_name = "/aws/lambda/sessionsync-prod"
    log_stream_name = "2024/01/01/[$LATEST]0123456789abcdef"

    def __init__(self, timeout_ms: int = 10_000) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.monotonic() + timeout_ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def api_gateway_event(method: str, resource: str, path: str, *, api_key: str,
                      path_parameters: dict[str, str] | None = None, body: str | None = None,
                      headers: dict[str, str] | None = None) -> dict[str, Any]:
    """A REST API (v1) proxy-integration event, as a deployed API sends it.

    The authorizer already ran in API Gateway: its result is in
    ``requestContext.authorizer``, and the handler does not run it again.
    """
    all_headers = {
        "Accept": "application/json",
        "Accept-Encoding": "gzip, deflate, br",
        "Authorization": f"Bearer {api_key}",
        "CloudFront-Forwarded-Proto": "https",
        "CloudFront-Viewer-Country": "GB",
        "Host": f"{API_ID}.execute-api.{REGION}.amazonaws.com",
        "User-Agent": "sessionsync-client/1.0",
        "Via": "2.0 0123456789abcdef0123456789abcdef.cloudfront.net (CloudFront)",
        "X-Amz-Cf-Id": "Qm9ndXNDbG91ZEZyb250SWRlbnRpZmllcg==",
        "X-Amzn-Trace-Id": "Root=1-65a1b2c3-0123456789abcdef01234567",
        "X-Forwarded-For": "203.0.113.7, 130.176.0.1",
        "X-Forwarded-Port": "443",
        "X-Forwarded-Proto": "https",
    }
    if body is not None:
        all_headers["Content-Type"] = "application/json"
    all_headers.update(headers or {})
    now = time.time()
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": all_headers,
        "multiValueHeaders": {name: [value] for name, value in all_headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": path_parameters,
        "stageVariables": None,
        "requestContext": {
            "resourceId": "abc123",
            "resourcePath": resource,
            "httpMethod": method,
            "extendedRequestId": "RqsT5EXAMPLEAMg=",
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "path": f"/{STAGE}{path}",
            "accountId": ACCOUNT,
            "protocol": "HTTP/1.1",
            "stage": STAGE,
            "domainPrefix": API_ID,
            "requestTimeEpoch": int(now * 1000),
            "requestId": str(uuid.uuid4()),
            "identity": {"sourceIp": "203.0.113.7", "userAgent": "sessionsync-client/1.0",
                         "accountId": None, "caller": None, "user": None, "userArn": None,
                         "cognitoIdentityId": None, "cognitoIdentityPoolId": None,
                         "cognitoAuthenticationType": None, "cognitoAuthenticationProvider": None,
                         "accessKey": None, "apiKey": None, "apiKeyId": None},
            "domainName": f"{API_ID}.execute-api.{REGION}.amazonaws.com",
            "apiId": API_ID,
            # what the authorizer answered for a key of the default tenant with every scope
            "authorizer": {"principalId": FULL_ACCESS.key_id, **FULL_ACCESS.to_context(),
                           "integrationLatency": 0},
        },
        "body": body,
        "isBase64Encoded": False,
    }


def session_get_event(session_id: str, api_key: str) -> dict[str, Any]:
    return api_gateway_event("GET", "/sessions/{session_id}", f"/sessions/{session_id}",
                             api_key=api_key, path_parameters={"session_id": session_id})


def session_put_event(session_id: str, state_json: str, expected_version: int,
                      api_key: str) -> dict[str, Any]:
    body = '{"state":%s,"expected_version":%d}' % (state_json, expected_version)
    return api_gateway_event("PUT", "/sessions/{session_id}", f"/sessions/{session_id}",
                             api_key=api_key, path_parameters={"session_id": session_id},
                             body=body)


def session_patch_event(session_id: str, state_json: str, api_key: str) -> dict[str, Any]:
    """A PATCH (JSON Merge Patch) whose ``state`` member is ``state_json``, without If-Match."""
    return api_gateway_event("PATCH", "/sessions/{session_id}", f"/sessions/{session_id}",
                             api_key=api_key, path_parameters={"session_id": session_id},
                             body='{"state":%s}' % state_json,
                             headers={"Content-Type": "application/merge-patch+json"})


def authorizer_event(api_key: str) -> dict[str, Any]:
    """What API Gateway sends a TOKEN authorizer (the Authorization header)."""
    return {"type": "TOKEN", "authorizationToken": f"Bearer {api_key}",
            "methodArn": f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{API_ID}/{STAGE}/GET/sessions/s1"}


def schedule_event() -> dict[str, Any]:
    """What EventBridge sends a scheduled function (``Rate``)."""
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event",
            "source": "aws.events", "account": ACCOUNT,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "region": REGION,
            "resources": [f"arn:aws:events:{REGION}:{ACCOUNT}:rule/sessionsync-relay_outbox"],
            "detail": {}}


def sqs_record(body: str, *, event_id: str | None = None, queue: str = "sessionsync-events",
               receive_count: int = 1) -> dict[str, Any]:
    """One record of an SQS-triggered Lambda event (event source mapping shape)."""
    message_id = str(uuid.uuid4())
    now_ms = str(int(time.time() * 1000))
    record: dict[str, Any] = {
        "messageId": message_id,
        "receiptHandle": f"AQEB{uuid.uuid4().hex}{message_id}",
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": str(receive_count),
            "SentTimestamp": now_ms,
            "SenderId": "AROAEXAMPLE:sessionsync-prod",
            "ApproximateFirstReceiveTimestamp": now_ms,
        },
        "messageAttributes": {},
        "md5OfBody": hashlib.md5(body.encode()).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}",
        "awsRegion": REGION,
    }
    if event_id is not None:
        record["messageAttributes"]["event_id"] = {
            "stringValue": event_id, "stringListValues": [], "binaryListValues": [],
            "dataType": "String"}
    return record


def sqs_event(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Records": records}


def sqs_batches(bodies: Sequence[tuple[str, str]], batch: int) -> list[dict[str, Any]]:
    """SQS events of ``batch`` records each, from (event id, body) pairs."""
    return [sqs_event([sqs_record(body, event_id=eid) for eid, body in bodies[i:i + batch]])
            for i in range(0, len(bodies), batch)]
