/**
 * One error class per problem code of the API, in the server's own tree.
 *
 * Every error answer of sessionsync is RFC 9457 problem details with a stable
 * `code`; `errorFromReply` turns one into the class of that code.  A code this
 * version does not know (the API may add codes in a minor version), or an
 * answer that is not problem details (a proxy's), becomes `SessionSyncError`
 * with its HTTP status.  `TransportError` is the one error that is not an
 * answer: no reply came within the retry budget.
 */
import type { components } from "./generated/openapi.js";

/** The API's problem codes, as docs/openapi.yaml lists them. */
export type ErrorCode = components["schemas"]["Error"]["error"]["code"];

export interface ErrorInit {
  status?: number;
  code?: string;
  details?: Record<string, unknown>;
  problem?: Record<string, unknown>;
  requestId?: string;
}

export class SessionSyncError extends Error {
  /** The HTTP status of the answer (undefined: no answer). */
  readonly status?: number;
  /** The problem's stable code. */
  readonly code?: string;
  /** The problem's `error.details`. */
  readonly details: Record<string, unknown>;
  /** The whole problem body as parsed. */
  readonly problem: Record<string, unknown>;
  /** The answer's X-Request-Id: quote it to an operator. */
  readonly requestId?: string;

  constructor(message: string, init: ErrorInit = {}) {
    super(message);
    this.name = new.target.name;
    this.status = init.status;
    this.code = init.code ?? (new.target as unknown as { CODE?: string }).CODE;
    this.details = init.details ?? {};
    this.problem = init.problem ?? {};
    this.requestId = init.requestId;
  }
}

/** No answer: a refused or reset connection, or a timeout, on the last attempt allowed. */
export class TransportError extends SessionSyncError {
  /** Whether the request may have reached the server (a write without an Idempotency-Key may have happened). */
  readonly sent: boolean;

  constructor(message: string, sent: boolean, options?: { cause?: unknown }) {
    super(message);
    this.sent = sent;
    if (options?.cause !== undefined) Object.defineProperty(this, "cause", { value: options.cause });
  }
}

/** 400: the request is malformed; `details.field` names the culprit. Nothing was written. */
export class ValidationError extends SessionSyncError {
  static readonly CODE: ErrorCode = "ValidationError";
}
/** 413: the state is over the server's MAX_STATE_BYTES. */
export class PayloadTooLargeError extends ValidationError {
  static override readonly CODE: ErrorCode = "PayloadTooLarge";
}
/** 428: an update named no version. */
export class PreconditionRequiredError extends ValidationError {
  static override readonly CODE: ErrorCode = "PreconditionRequired";
}
/** 401: no API key was sent. */
export class UnauthorizedError extends SessionSyncError {
  static readonly CODE: ErrorCode = "Unauthorized";
}
/** 403: the API key is not valid. */
export class ForbiddenError extends SessionSyncError {
  static readonly CODE: ErrorCode = "Forbidden";
}
/** 403: the API key is valid but lacks the scope the operation needs (`scope`); nothing was read or written. */
export class MissingScopeError extends ForbiddenError {
  static override readonly CODE: ErrorCode = "MissingScope";
  get scope(): string | undefined {
    return typeof this.details.scope === "string" ? this.details.scope : undefined;
  }
}
/** 404 of a path the API does not have (a stage such as /dev belongs in baseUrl). */
export class RouteNotFoundError extends SessionSyncError {
  static readonly CODE: ErrorCode = "RouteNotFound";
}
/** 405: the path has no such method. */
export class MethodNotAllowedError extends SessionSyncError {
  static readonly CODE: ErrorCode = "MethodNotAllowed";
}
/** 415: the body's Content-Type is not the one the route takes. */
export class UnsupportedMediaTypeError extends SessionSyncError {
  static readonly CODE: ErrorCode = "UnsupportedMediaType";
}

/**
 * 404: no such session (`deleted` for a deleted one; ids are never reused).
 * Constructed as the Node design's `SessionNotFoundError(sessionId)` is.
 */
export class SessionNotFoundError extends SessionSyncError {
  static readonly CODE: ErrorCode = "SessionNotFound";
  readonly sessionId: string;

  constructor(sessionId: string, init: ErrorInit = {}) {
    super(init.problem ? String(init.problem["detail"] ?? `Session ${sessionId} not found`)
      : `Session ${sessionId} not found`, init);
    this.sessionId = sessionId;
  }

  get deleted(): boolean {
    return this.details["deleted"] === true;
  }
}
/** 404: the session's lifetime ended (`expiresAt`); start a new one. */
export class SessionExpiredError extends SessionNotFoundError {
  static override readonly CODE: ErrorCode = "SessionExpired";

  get expiresAt(): string | undefined {
    const value = this.details["expires_at"];
    return typeof value === "string" ? value : undefined;
  }
}
/** 409 on a create: the id is taken, or was (`deleted`). */
export class SessionExistsError extends SessionSyncError {
  static readonly CODE: ErrorCode = "SessionExists";

  get sessionId(): string | undefined {
    return this.details["session_id"] as string | undefined;
  }

  get deleted(): boolean {
    return this.details["deleted"] === true;
  }
}

/**
 * 409: another writer changed the session after it was read: read it again
 * and re-apply the change (`update` does).  Constructed as the Node design's
 * `ConcurrencyError(sessionId, expectedVersion, actualVersion)` is.
 */
export class ConcurrencyError extends SessionSyncError {
  static readonly CODE: ErrorCode = "ConcurrencyError";
  readonly sessionId: string;
  readonly expectedVersion: number | null;
  readonly actualVersion: number | null;

  constructor(sessionId: string, expectedVersion: number | null, actualVersion: number | null,
    init: ErrorInit = {}) {
    super(init.problem ? String(init.problem["detail"])
      : `Concurrent modification detected on session ${sessionId}: expected version ` +
        `${expectedVersion}, found ${actualVersion}`, init);
    this.sessionId = sessionId;
    this.expectedVersion = expectedVersion;
    this.actualVersion = actualVersion;
  }
}
/** 412: the version sent as If-Match is not the current one. */
export class PreconditionFailedError extends ConcurrencyError {
  static override readonly CODE: ErrorCode = "PreconditionFailed";
}
/** 422: this Idempotency-Key was used for another request on the session; nothing was written. */
export class IdempotencyKeyReusedError extends SessionSyncError {
  static readonly CODE: ErrorCode = "IdempotencyKeyReused";
}
/** 503: a dependency of the service is down or settling; the retry budget ran out. */
export class ServiceUnavailableError extends SessionSyncError {
  static readonly CODE: ErrorCode = "ServiceUnavailable";
  /** The server's Retry-After, in seconds. */
  retryAfter?: number;

  get dependency(): string | undefined {
    return this.details["dependency"] as string | undefined;
  }
}
/** 503: the session is being recovered from PostgreSQL; retry shortly. */
export class RecoveryPendingError extends ServiceUnavailableError {
  static override readonly CODE: ErrorCode = "RecoveryPending";
}
/** 500: the service is misconfigured (an operator's problem). */
export class ConfigurationError extends SessionSyncError {
  static readonly CODE: ErrorCode = "ConfigurationError";
}
/** 500: an unexpected error in the service. */
/** 429: the key's tenant has as many live sessions as the server allows; a create succeeds once one ends. */
export class SessionLimitReachedError extends SessionSyncError {
  static readonly CODE: ErrorCode = "SessionLimitReached";
}
export class InternalServerError extends SessionSyncError {
  static readonly CODE: ErrorCode = "InternalError";
}

type Plain = new (message: string, init?: ErrorInit) => SessionSyncError;

/** The class of each code: a code docs/openapi.yaml adds fails the build here until it has one. */
export const ERROR_CLASSES: { readonly [code in ErrorCode]: Function } = {
  ValidationError, PayloadTooLarge: PayloadTooLargeError, PreconditionRequired: PreconditionRequiredError,
  Unauthorized: UnauthorizedError, Forbidden: ForbiddenError, MissingScope: MissingScopeError,
  RouteNotFound: RouteNotFoundError,
  MethodNotAllowed: MethodNotAllowedError, UnsupportedMediaType: UnsupportedMediaTypeError,
  SessionNotFound: SessionNotFoundError, SessionExpired: SessionExpiredError, SessionExists: SessionExistsError,
  ConcurrencyError, PreconditionFailed: PreconditionFailedError,
  IdempotencyKeyReused: IdempotencyKeyReusedError, SessionLimitReached: SessionLimitReachedError,
  ServiceUnavailable: ServiceUnavailableError,
  RecoveryPending: RecoveryPendingError, ConfigurationError, InternalError: InternalServerError,
};

const BY_STATUS: Record<number, Plain> = {
  401: UnauthorizedError, 403: ForbiddenError, 413: PayloadTooLargeError, 503: ServiceUnavailableError,
};

function asRecord(value: unknown): Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value)
    ? value as Record<string, unknown> : {};
}

function asVersion(value: unknown): number | null {
  return typeof value === "number" ? value : null;
}

/** The error for an error answer (`headers` as the reply carried them). */
export function errorFromReply(status: number, headers: Headers, body: string,
  retryAfter?: number): SessionSyncError {
  let parsed: unknown;
  try {
    parsed = body ? JSON.parse(body) : undefined;
  } catch {
    parsed = undefined;
  }
  const problem = asRecord(parsed);
  const error = asRecord(problem["error"]);
  const rawCode = problem["code"] ?? error["code"];
  const code = typeof rawCode === "string" ? rawCode : undefined;
  const message = String(problem["detail"] ?? error["message"] ?? problem["message"] ??
    (body ? body.slice(0, 200) : `HTTP ${status}`));
  const details = asRecord(error["details"]);
  const init: ErrorInit = { status, details, problem, requestId: headers.get("x-request-id") ?? undefined };
  if (code !== undefined) init.code = code;
  const known = code !== undefined && Object.prototype.hasOwnProperty.call(ERROR_CLASSES, code)
    ? ERROR_CLASSES[code as ErrorCode] : undefined;
  let made: SessionSyncError;
  if (known === ConcurrencyError || known === PreconditionFailedError) {
    const cls = known as typeof ConcurrencyError;
    made = new cls(String(details["session_id"] ?? ""), asVersion(details["expected_version"]),
      asVersion(details["actual_version"]), init);
  } else if (known === SessionNotFoundError || known === SessionExpiredError) {
    made = new (known as typeof SessionNotFoundError)(String(details["session_id"] ?? ""), init);
  } else {
    const cls = (known as Plain | undefined) ?? BY_STATUS[status] ?? SessionSyncError;
    made = new cls(message, init);
  }
  if (made instanceof ServiceUnavailableError) made.retryAfter = retryAfter;
  return made;
}
