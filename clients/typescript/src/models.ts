/**
 * What the API answers, as typed objects.  The wire shapes are the types
 * generated from docs/openapi.yaml (src/generated/openapi.ts): a renamed or
 * retyped member there fails the build here.
 */
import type { components } from "./generated/openapi.js";

type Schemas = components["schemas"];
export type WireSession = Schemas["Session"];
export type WireEvent = Schemas["Event"];
export type WireEventPage = Schemas["EventPage"];
export type WireOwnerSessionPage = Schemas["OwnerSessionPage"];
export type WireRevokeResult = Schemas["RevokeResult"];
export type WireHealth = Schemas["Health"];
export type EventType = WireEvent["event_type"];

/** A session's state: any JSON object. */
export type State = Record<string, unknown>;

/** A session as the API answered it, and how that answer was served. */
export interface Session<S extends State = State> {
  readonly sessionId: string;
  readonly version: number;
  readonly state: S;
  readonly createdAt: Date;
  readonly updatedAt: Date;
  readonly expiresAt: Date;
  readonly ttlSeconds: number;
  readonly ownerId?: string;
  /** This answer replays a write already done (the retry of a keyed write). */
  readonly replayed: boolean;
  /** "postgresql" when recovered or served stale from PostgreSQL. */
  readonly source: "redis" | "postgresql";
  /** For a stale copy (`maxStale`): its age in seconds. */
  readonly age?: number;
  /** The answer's X-Request-Id. */
  readonly requestId?: string;
  /** The version as the ETag the API sends: `"3"`. */
  readonly etag: string;
}

export interface SessionEvent<S extends State = State> {
  readonly version: number;
  readonly eventType: EventType;
  readonly occurredAt: Date;
  readonly persistedAt?: Date;
  /** The state after the change; null for a deletion and an expiry. */
  readonly state: S | null;
}

export interface EventPage<S extends State = State> {
  readonly sessionId: string;
  readonly events: SessionEvent<S>[];
  /** Pass as `cursor` for the next page; null on the last. */
  readonly nextCursor: string | null;
}

export interface SessionPage<S extends State = State> {
  readonly ownerId: string;
  readonly sessions: Session<S>[];
  /** Pass as `cursor` for the next page; null on the last. */
  readonly nextCursor: string | null;
}

/** What `revokeAll` did, over all the calls it made. */
export interface RevokeResult {
  readonly ownerId: string;
  readonly deleted: number;
  readonly blocked: number;
  readonly calls: number;
}

export interface Health {
  readonly status: WireHealth["status"];
  readonly checks: WireHealth["checks"];
  readonly warnings: string[];
  readonly httpStatus: number;
  readonly ok: boolean;
}

export function sessionFrom<S extends State>(wire: WireSession, headers?: Headers): Session<S> {
  const age = headers?.get("age");
  const session: Session<S> = {
    sessionId: wire.session_id,
    version: wire.version,
    state: wire.state as S,
    createdAt: new Date(wire.created_at),
    updatedAt: new Date(wire.updated_at),
    expiresAt: new Date(wire.expires_at),
    ttlSeconds: wire.ttl_seconds,
    replayed: headers?.get("idempotent-replayed") === "true",
    source: headers?.get("x-session-source") === "postgresql" ? "postgresql" : "redis",
    etag: `"${wire.version}"`,
    ...(wire.owner_id !== undefined ? { ownerId: wire.owner_id } : {}),
    ...(age != null && /^[0-9]+$/.test(age) ? { age: Number(age) } : {}),
    ...(headers?.get("x-request-id") ? { requestId: headers.get("x-request-id") as string } : {}),
  };
  return session;
}

export function eventFrom<S extends State>(wire: WireEvent): SessionEvent<S> {
  return {
    version: wire.version,
    eventType: wire.event_type,
    occurredAt: new Date(wire.occurred_at),
    state: wire.state as S | null,
    ...(wire.persisted_at !== undefined ? { persistedAt: new Date(wire.persisted_at) } : {}),
  };
}
