/**
 * SessionSyncClient: the API's rules built in, on the platform's `fetch`.
 *
 * The same behaviour as the Python client (clients/python): an
 * Idempotency-Key on every write, so a write whose answer was lost is sent
 * again and applied once; Retry-After honoured within a bounded budget; the
 * conflict loop as one call (`update`); merge patches; stale reads; iterators
 * that follow `nextCursor`.
 */
import {
  ConcurrencyError,
  errorFromReply,
  SessionSyncError,
  TransportError,
} from "./errors.js";
import {
  eventFrom,
  sessionFrom,
  type EventPage,
  type Health,
  type RevokeResult,
  type Session,
  type SessionEvent,
  type SessionPage,
  type State,
  type WireEventPage,
  type WireHealth,
  type WireOwnerSessionPage,
  type WireRevokeResult,
  type WireSession,
} from "./models.js";

export const VERSION = "1.0.0";
const MERGE_PATCH = "application/merge-patch+json";
// Answers worth another attempt: throttled (429: it never reached the
// service), the service's 503, a gateway's 502/504 (the function may have
// written: like a timeout, only a keyed write is sent again).
const RETRY_STATUSES = new Set([429, 502, 503, 504]);
// Errors of a connection that was never made: the request never left.
const NOT_SENT = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "ENETUNREACH", "EHOSTUNREACH",
  "UND_ERR_CONNECT_TIMEOUT"]);

/**
 * How a call that got no answer, a 503, a 429, a 502 or a 504 is tried again:
 * at most `attempts` sends within `budgetMs`, waiting the answer's
 * Retry-After, else a jittered exponential backoff.  A write is sent again
 * only when it carries an Idempotency-Key (the default).
 */
export interface RetryPolicy {
  attempts: number;
  budgetMs: number;
  backoffBaseMs: number;
  backoffCapMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 4, budgetMs: 10_000, backoffBaseMs: 100, backoffCapMs: 2_000 };

export type Version = number | "*";
export type FetchLike = (input: string, init: RequestInit) => Promise<Response>;

export interface ClientOptions {
  /** The API's URL, with its stage: `https://abc.execute-api.eu-west-1.amazonaws.com/prod`. */
  baseUrl: string;
  /** The API key (`Authorization: Bearer ...`); undefined sends none. */
  apiKey?: string;
  /** Per attempt, in milliseconds (default 10 000). */
  timeoutMs?: number;
  retry?: Partial<RetryPolicy>;
  /** false: writes carry no Idempotency-Key, and are then never sent twice. */
  idempotencyKeys?: boolean;
  /** Added to every request (a traceparent, an X-Request-Id). */
  headers?: Record<string, string>;
  /** The fetch to use (default: the global one). */
  fetch?: FetchLike;
}

export interface WriteOptions {
  /** Your own key for this write (default: a new UUID per call, the same on each retry). */
  idempotencyKey?: string;
}

interface Request {
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: string;
  /** Safe to send again when the first answer was lost: a read, a keyed write. */
  retryable: boolean;
}

interface Reply {
  status: number;
  headers: Headers;
  body: string;
}

class NoAnswer extends Error {
  constructor(message: string, readonly sent: boolean, readonly reason: unknown) {
    super(message);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Retry-After as milliseconds: delta-seconds or an HTTP date (RFC 9110). */
export function retryAfterMs(headers: Headers): number | undefined {
  const value = headers.get("retry-after")?.trim();
  if (!value) return undefined;
  if (/^[0-9]+$/.test(value)) return Number(value) * 1000;
  const when = Date.parse(value);
  return Number.isNaN(when) ? undefined : Math.max(0, when - Date.now());
}

/** A Structured Field string, the Idempotency-Key header's form. */
function idempotencyHeader(key: string): string {
  if (key.length < 1 || key.length > 255 || !/^[\x20-\x7e]*$/.test(key)) {
    throw new RangeError("an Idempotency-Key is 1 to 255 printable ASCII characters");
  }
  return `"${key.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
}

function segment(id: string): string {
  // ':' is kept as is (ids use it); '/' and the rest are escaped, so an id never changes the route
  return encodeURIComponent(id).replace(/%3A/gi, ":");
}

function sessionPath(sessionId: string, suffix = ""): string {
  return `/sessions/${segment(sessionId)}${suffix}`;
}

function ifMatch(version: Version | null | undefined): Record<string, string> {
  if (version === null || version === undefined) return {};
  if (version === "*") return { "If-Match": "*" };
  if (!Number.isSafeInteger(version)) throw new TypeError(`version must be an integer or "*", not ${version}`);
  return { "If-Match": `"${version}"` };
}

function query(params: Record<string, string | number | undefined | null>): string {
  const entries = Object.entries(params).filter(([, v]) => v !== undefined && v !== null)
    .map(([k, v]): [string, string] => [k, String(v)]);
  return entries.length ? `?${new URLSearchParams(entries).toString()}` : "";
}

/** Guards an iterator that follows `nextCursor`: a cursor seen before would loop forever. */
class CursorLoop {
  private readonly seen = new Set<string>();

  follow(cursor: string | null): cursor is string {
    if (cursor === null) return false;
    if (this.seen.has(cursor)) {
      throw new SessionSyncError(`the server returned the cursor ${cursor} twice; the listing would not end`);
    }
    this.seen.add(cursor);
    return true;
  }
}

export class SessionSyncClient {
  readonly baseUrl: string;
  private readonly options: ClientOptions;
  private readonly retry: RetryPolicy;
  private readonly fetchImpl: FetchLike;
  /** Conflict loop backoff (ms): the first wait is at most this, doubling to the cap. */
  conflictBackoffBaseMs = 10;
  conflictBackoffCapMs = 500;

  constructor(options: ClientOptions) {
    this.options = options;
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.retry = { ...DEFAULT_RETRY, ...options.retry };
    if (this.retry.attempts < 1) throw new RangeError("retry.attempts must be at least 1");
    const fetchImpl = options.fetch ?? (globalThis.fetch as FetchLike | undefined);
    if (!fetchImpl) throw new TypeError("no fetch: pass options.fetch (Node 18+ has a global one)");
    this.fetchImpl = fetchImpl;
  }

  /** A client that adds `headers` to every request (e.g. a traceparent). */
  withHeaders(headers: Record<string, string>): SessionSyncClient {
    return new SessionSyncClient({ ...this.options, headers: { ...this.options.headers, ...headers } });
  }

  // --- sending, with the retry budget -------------------------------------------

  private baseHeaders(): Record<string, string> {
    const headers: Record<string, string> = {
      Accept: "application/json, application/problem+json",
    };
    if (typeof process !== "undefined") headers["User-Agent"] = `sessionsync-client-typescript/${VERSION}`;
    if (this.options.apiKey !== undefined) headers["Authorization"] = `Bearer ${this.options.apiKey}`;
    return { ...headers, ...this.options.headers };
  }

  private async sendOnce(request: Request): Promise<Reply> {
    const init: RequestInit = {
      method: request.method,
      headers: request.headers,
      redirect: "manual",
      signal: AbortSignal.timeout(this.options.timeoutMs ?? 10_000),
    };
    if (request.body !== undefined) init.body = request.body;
    let response: Response;
    try {
      response = await this.fetchImpl(this.baseUrl + request.path, init);
    } catch (error) {
      throw this.noAnswer(error);
    }
    try {
      return { status: response.status, headers: response.headers, body: await response.text() };
    } catch (error) {
      throw new NoAnswer(`the answer was cut off: ${describe(error)}`, true, error);
    }
  }

  private noAnswer(error: unknown): NoAnswer {
    const cause = (error as { cause?: { code?: string } } | undefined)?.cause;
    const code = cause?.code ?? (error as { code?: string } | undefined)?.code;
    return new NoAnswer(describe(error), !(code !== undefined && NOT_SENT.has(code)), error);
  }

  private backoff(attempt: number, baseMs: number, capMs: number): number {
    // full jitter, so that clients that failed together do not come back together
    return Math.min(capMs, baseMs * 2 ** (attempt - 1)) * Math.random();
  }

  /** Send, again after a lost answer or a retryable status while the policy allows; the last reply. */
  private async exchange(request: Request): Promise<Reply> {
    const policy = this.retry;
    const deadline = Date.now() + policy.budgetMs;
    for (let attempt = 1; ; attempt++) {
      const last = attempt >= policy.attempts;
      let wait: number;
      try {
        const reply = await this.sendOnce(request);
        if (last || !RETRY_STATUSES.has(reply.status) || (reply.status !== 429 && !request.retryable)) {
          return reply;
        }
        wait = retryAfterMs(reply.headers) ?? this.backoff(attempt, policy.backoffBaseMs, policy.backoffCapMs);
        if (Date.now() + wait > deadline) return reply;
      } catch (error) {
        if (!(error instanceof NoAnswer)) throw error;
        const plural = attempt > 1 ? "s" : "";
        if (last || (error.sent && !request.retryable)) {
          throw new TransportError(`${request.method} ${request.path}: ${error.message} (after ${attempt} attempt${plural})`,
            error.sent, { cause: error.reason });
        }
        wait = this.backoff(attempt, policy.backoffBaseMs, policy.backoffCapMs);
        if (Date.now() + wait > deadline) {
          throw new TransportError(`${request.method} ${request.path}: ${error.message} (the retry budget of ` +
            `${policy.budgetMs} ms is spent)`, error.sent, { cause: error.reason });
        }
      }
      await sleep(wait);
    }
  }

  /** `exchange`, then throw the error of an error answer. */
  private async call(request: Request): Promise<Reply> {
    const reply = await this.exchange(request);
    if (reply.status >= 400) {
      const after = retryAfterMs(reply.headers);
      throw errorFromReply(reply.status, reply.headers, reply.body, after === undefined ? undefined : after / 1000);
    }
    return reply;
  }

  private write(method: string, path: string, body: unknown, options: WriteOptions = {},
    extra: Record<string, string> = {}, contentType = "application/json"): Request {
    const headers = this.baseHeaders();
    if (body !== undefined) headers["Content-Type"] = contentType;
    let key = options.idempotencyKey;
    if (key === undefined && this.options.idempotencyKeys !== false) key = crypto.randomUUID();
    if (key !== undefined) headers["Idempotency-Key"] = idempotencyHeader(key);
    // the body encoded once: a retry resends these exact bytes (the server
    // compares a keyed retry's body byte for byte)
    const request: Request = { method, path, headers: { ...headers, ...extra }, retryable: key !== undefined };
    if (body !== undefined) request.body = JSON.stringify(body);
    return request;
  }

  private read(path: string, extra: Record<string, string> = {}): Request {
    return { method: "GET", path, headers: { ...this.baseHeaders(), ...extra }, retryable: true };
  }

  // --- the API --------------------------------------------------------------------

  /** POST /sessions: a new session at version 1 (an id is generated when none is given: the same on every retry). */
  async create<S extends State = State>(state: S, options: WriteOptions & {
    sessionId?: string; ttlSeconds?: number; ownerId?: string;
  } = {}): Promise<Session<S>> {
    const body: Record<string, unknown> = { state };
    if (options.sessionId !== undefined) body["session_id"] = options.sessionId;
    if (options.ttlSeconds !== undefined) body["ttl_seconds"] = options.ttlSeconds;
    if (options.ownerId !== undefined) body["owner_id"] = options.ownerId;
    const reply = await this.call(this.write("POST", "/sessions", body, options));
    return sessionFrom<S>(JSON.parse(reply.body) as WireSession, reply.headers);
  }

  /**
   * GET /sessions/{id}.  `maxStale` (seconds; true: any age) accepts, while
   * Redis is down, PostgreSQL's last copy if at most that old (`source`
   * "postgresql", `age`).
   */
  async get<S extends State = State>(sessionId: string, options: { maxStale?: number | true } = {}):
  Promise<Session<S>> {
    const extra: Record<string, string> = {};
    if (options.maxStale === true) extra["Cache-Control"] = "max-stale";
    else if (options.maxStale !== undefined) {
      if (!Number.isSafeInteger(options.maxStale) || options.maxStale < 0) {
        throw new RangeError("maxStale is a number of seconds (or true: any age)");
      }
      extra["Cache-Control"] = `max-stale=${options.maxStale}`;
    }
    const reply = await this.call(this.read(sessionPath(sessionId), extra));
    return sessionFrom<S>(JSON.parse(reply.body) as WireSession, reply.headers);
  }

  /** The session again if it changed, else `session` itself (a 304). */
  async refresh<S extends State>(session: Session<S>): Promise<Session<S>> {
    const reply = await this.call(this.read(sessionPath(session.sessionId), { "If-None-Match": session.etag }));
    if (reply.status === 304) return session;
    return sessionFrom<S>(JSON.parse(reply.body) as WireSession, reply.headers);
  }

  /**
   * PUT: replace the state if the session is at `version` (the one you read;
   * "*": whatever is current).  Rejects with PreconditionFailedError (a
   * ConcurrencyError) when another writer got there first.  `null` sends no
   * precondition, which the API refuses (PreconditionRequiredError).
   */
  async put<S extends State = State>(sessionId: string, state: S, version: Version | null,
    options: WriteOptions & { ttlSeconds?: number } = {}): Promise<Session<S>> {
    const body: Record<string, unknown> = { state };
    if (options.ttlSeconds !== undefined) body["ttl_seconds"] = options.ttlSeconds;
    const reply = await this.call(this.write("PUT", sessionPath(sessionId), body, options, ifMatch(version)));
    return sessionFrom<S>(JSON.parse(reply.body) as WireSession, reply.headers);
  }

  /** PUT with If-None-Match: *: create `sessionId` unless it exists or existed (PreconditionFailedError). */
  async createIfAbsent<S extends State = State>(sessionId: string, state: S, options: WriteOptions & {
    ttlSeconds?: number; ownerId?: string;
  } = {}): Promise<Session<S>> {
    const body: Record<string, unknown> = { state };
    if (options.ttlSeconds !== undefined) body["ttl_seconds"] = options.ttlSeconds;
    if (options.ownerId !== undefined) body["owner_id"] = options.ownerId;
    const reply = await this.call(this.write("PUT", sessionPath(sessionId), body, options, { "If-None-Match": "*" }));
    return sessionFrom<S>(JSON.parse(reply.body) as WireSession, reply.headers);
  }

  /**
   * The conflict loop as one call: read the session, compute the new state
   * with `change(state)` (return it, or change the object in place and
   * return nothing), write it if the session is still at the version read;
   * when another writer got there first, start again from a fresh read
   * (jittered backoff), at most `attempts` times (default 16).  `change` may
   * run several times: make it depend only on the state it is given.
   */
  async update<S extends State = State>(sessionId: string,
    change: (state: S) => S | void | Promise<S | void>,
    options: { attempts?: number; ttlSeconds?: number } = {}): Promise<Session<S>> {
    const attempts = options.attempts ?? 16;
    if (attempts < 1) throw new RangeError("attempts must be at least 1");
    for (let attempt = 1; ; attempt++) {
      const session = await this.get<S>(sessionId);
      const changed = await change(session.state);
      const state = (changed ?? session.state) as S;
      try {
        const written: { ttlSeconds?: number } = {};
        if (options.ttlSeconds !== undefined) written.ttlSeconds = options.ttlSeconds;
        return await this.put<S>(sessionId, state, session.version, written);
      } catch (error) {
        if (!(error instanceof ConcurrencyError) || attempt >= attempts) throw error;
      }
      await sleep(this.backoff(attempt, this.conflictBackoffBaseMs, this.conflictBackoffCapMs));
    }
  }

  /**
   * PATCH: a JSON Merge Patch (RFC 7396) of the state, merged on the server
   * atomically: members not named are kept, null removes one.  Without
   * `version` it applies to whatever version is current.
   */
  async patch<S extends State = State>(sessionId: string, statePatch?: Record<string, unknown>,
    options: WriteOptions & { version?: Version; ttlSeconds?: number } = {}): Promise<Session<S>> {
    const body: Record<string, unknown> = {};
    if (statePatch !== undefined) body["state"] = statePatch;
    if (options.ttlSeconds !== undefined) body["ttl_seconds"] = options.ttlSeconds;
    const reply = await this.call(this.write("PATCH", sessionPath(sessionId), body, options,
      ifMatch(options.version), MERGE_PATCH));
    return sessionFrom<S>(JSON.parse(reply.body) as WireSession, reply.headers);
  }

  /** DELETE: the session ends (its id is never reused; its history stays). */
  async delete(sessionId: string, options: WriteOptions & { version?: Version } = {}): Promise<void> {
    await this.call(this.write("DELETE", sessionPath(sessionId), undefined, options, ifMatch(options.version)));
  }

  /** Extend the lifetime (a new version, the state unchanged). */
  async touch<S extends State = State>(sessionId: string,
    options: WriteOptions & { ttlSeconds?: number; version?: Version } = {}): Promise<Session<S>> {
    const body = options.ttlSeconds === undefined ? undefined : { ttl_seconds: options.ttlSeconds };
    const reply = await this.call(this.write("POST", sessionPath(sessionId, "/touch"), body, options,
      ifMatch(options.version)));
    return sessionFrom<S>(JSON.parse(reply.body) as WireSession, reply.headers);
  }

  async historyPage<S extends State = State>(sessionId: string,
    options: { cursor?: string | null; limit?: number } = {}): Promise<EventPage<S>> {
    const reply = await this.call(this.read(sessionPath(sessionId, "/events") +
      query({ limit: options.limit ?? 50, cursor: options.cursor })));
    const page = JSON.parse(reply.body) as WireEventPage;
    return { sessionId: page.session_id, events: page.events.map((e) => eventFrom<S>(e)), nextCursor: page.next_cursor };
  }

  /** Every persisted event of the session, newest first, page after page. */
  async *history<S extends State = State>(sessionId: string, options: { pageSize?: number } = {}):
  AsyncGenerator<SessionEvent<S>> {
    const loop = new CursorLoop();
    let cursor: string | null = null;
    for (;;) {
      const page: EventPage<S> = await this.historyPage<S>(sessionId, { cursor, limit: options.pageSize ?? 50 });
      yield* page.events;
      if (!loop.follow(page.nextCursor)) return;
      cursor = page.nextCursor;
    }
  }

  async ownerSessionsPage<S extends State = State>(ownerId: string,
    options: { cursor?: string | null; limit?: number } = {}): Promise<SessionPage<S>> {
    const reply = await this.call(this.read(`/owners/${segment(ownerId)}/sessions` +
      query({ limit: options.limit ?? 50, cursor: options.cursor })));
    const page = JSON.parse(reply.body) as WireOwnerSessionPage;
    return { ownerId: page.owner_id, sessions: page.sessions.map((s) => sessionFrom<S>(s)), nextCursor: page.next_cursor };
  }

  /** Every live session of the owner, in id order (a page may be short, even empty, before the end). */
  async *ownerSessions<S extends State = State>(ownerId: string, options: { pageSize?: number } = {}):
  AsyncGenerator<Session<S>> {
    const loop = new CursorLoop();
    let cursor: string | null = null;
    for (;;) {
      const page: SessionPage<S> = await this.ownerSessionsPage<S>(ownerId, { cursor, limit: options.pageSize ?? 50 });
      yield* page.sessions;
      if (!loop.follow(page.nextCursor)) return;
      cursor = page.nextCursor;
    }
  }

  /** Delete every session of the owner, calling again while the server says some remain. */
  async revokeAll(ownerId: string, options: { maxCalls?: number } = {}): Promise<RevokeResult> {
    const maxCalls = options.maxCalls ?? 100;
    let deleted = 0;
    let blocked = 0;
    for (let calls = 1; calls <= maxCalls; calls++) {
      // safe to repeat: a call cut short is finished by the next one
      const request: Request = { method: "DELETE", path: `/owners/${segment(ownerId)}/sessions`,
        headers: this.baseHeaders(), retryable: true };
      const result = JSON.parse((await this.call(request)).body) as WireRevokeResult;
      deleted += result.deleted;
      blocked += result.blocked;
      if (!result.remaining) return { ownerId, deleted, blocked, calls };
    }
    throw new SessionSyncError(`revoking the sessions of ${ownerId} still had sessions left after ` +
      `${maxCalls} calls (${deleted} deleted so far); call revokeAll again`);
  }

  /** GET /health (a 503 is a report too: `status` "down"). */
  async health(): Promise<Health> {
    const reply = await this.exchange(this.read("/health"));
    let body: WireHealth | undefined;
    try {
      body = JSON.parse(reply.body) as WireHealth;
    } catch {
      body = undefined;
    }
    if ((reply.status !== 200 && reply.status !== 503) || !body || !("checks" in body)) {
      throw errorFromReply(reply.status, reply.headers, reply.body);
    }
    return { status: body.status, checks: body.checks, warnings: body.warnings ?? [], httpStatus: reply.status,
      ok: body.status === "ok" };
  }
}

function describe(error: unknown): string {
  if (error instanceof Error) {
    const cause = (error as { cause?: unknown }).cause;
    return cause instanceof Error ? `${error.message} (${cause.message})` : error.message;
  }
  return String(error);
}
