// Every problem code docs/openapi.yaml lists has its class (the build fails
// when the generated types list a code ERROR_CLASSES lacks), in the server's tree.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  ConcurrencyError,
  ERROR_CLASSES,
  errorFromReply,
  PayloadTooLargeError,
  PreconditionFailedError,
  RecoveryPendingError,
  ServiceUnavailableError,
  SessionExpiredError,
  SessionNotFoundError,
  SessionSyncError,
  ValidationError,
} from "@sessionsync/client";

test("each code of the API becomes its own class, with its details", () => {
  for (const [code, cls] of Object.entries(ERROR_CLASSES)) {
    const body = JSON.stringify({ type: "about:blank", title: "t", status: 418, detail: "d", code,
      error: { code, message: "d", details: { session_id: "s", expected_version: 1, actual_version: 2 } } });
    const error = errorFromReply(418, new Headers({ "x-request-id": "r-1" }), body);
    assert.equal(error.constructor, cls, code);
    assert.deepEqual([error.code, error.requestId, error.details["session_id"]], [code, "r-1", "s"]);
  }
  assert.equal(Object.keys(ERROR_CLASSES).length, 20);
});

test("the classes follow the server's tree, and a ConcurrencyError names its versions", () => {
  assert.ok(new PreconditionFailedError("s", 1, 2) instanceof ConcurrencyError);
  assert.ok(new SessionExpiredError("s") instanceof SessionNotFoundError);
  assert.ok(new RecoveryPendingError("m") instanceof ServiceUnavailableError);
  assert.ok(new PayloadTooLargeError("m") instanceof ValidationError);
  const conflict = errorFromReply(409, new Headers(), JSON.stringify({ code: "ConcurrencyError", detail: "lost",
    error: { code: "ConcurrencyError", message: "lost", details: { session_id: "cart", expected_version: 3,
      actual_version: 4 } } }));
  assert.ok(conflict instanceof ConcurrencyError);
  assert.deepEqual([conflict.sessionId, conflict.expectedVersion, conflict.actualVersion, conflict.message],
    ["cart", 3, 4, "lost"]);
  // the Node design's constructor shape
  const own = new ConcurrencyError("cart", 1, 2);
  assert.deepEqual([own.name, own.sessionId, own.expectedVersion, own.actualVersion], ["ConcurrencyError", "cart", 1, 2]);
});

test("a code a later version adds, or an answer that is no problem details, is the base class", () => {
  const later = errorFromReply(409, new Headers(), '{"code":"SomethingNew","error":{"code":"SomethingNew"}}');
  assert.equal(later.constructor, SessionSyncError);
  assert.deepEqual([later.status, later.code], [409, "SomethingNew"]);
  const gateway = errorFromReply(502, new Headers(), "<html>Bad Gateway</html>");
  assert.equal(gateway.constructor, SessionSyncError);
  assert.equal(gateway.status, 502);
  const throttled = errorFromReply(503, new Headers(), '{"message":"Service Unavailable"}', 3);
  assert.ok(throttled instanceof ServiceUnavailableError && throttled.retryAfter === 3);
});
