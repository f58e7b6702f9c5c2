/**
 * SyncKairosStateManager: the Node design's state manager (getSession,
 * createSession, updateSession, deleteSession, close) over sessionsync's
 * HTTP API, so that code written against it keeps working with one changed
 * line: how the manager is constructed (docs/migrating-from-synckairos.md).
 *
 * What it keeps: a state object that carries its `session_id`, `version`,
 * `created_at` and `updated_at`; `getSession` resolving to null for a
 * missing session; ISO date strings in the state coming back as `Date`
 * objects; `ConcurrencyError(sessionId, expectedVersion, actualVersion)`;
 * a deleteSession of a missing session succeeding.  What it changes, on
 * purpose: an update is one atomic compare-and-set on the server, at
 * `expectedVersion` or else at the version the given state was read at
 * (`state.version`), so no acknowledged write is ever lost; and a deleted id
 * is never reused (updating it is SessionNotFoundError, not a re-creation).
 */
import { SessionSyncClient, type ClientOptions } from "./client.js";
import {
  ConcurrencyError,
  PreconditionFailedError,
  SessionNotFoundError,
} from "./errors.js";
import type { Session, State } from "./models.js";

/** The members of a state the manager owns (the session's, not the application's). */
const SESSION_MEMBERS = ["session_id", "version", "created_at", "updated_at"] as const;
// The Node design's deserializer turns every string that starts like an ISO
// date-time into a Date: the same test, so that the same strings come back as Dates.
const ISO_DATE_TIME = /^\d{4}-\d{2}-\d{2}T/;

/** What the Node design's SyncState has in common with any state this manager stores. */
export interface SyncKairosState {
  session_id: string;
  version: number;
  created_at?: Date;
  updated_at?: Date;
  [member: string]: unknown;
}

export type ConcurrencyErrorClass = new (sessionId: string, expectedVersion: number, actualVersion: number) => Error;
export type SessionNotFoundErrorClass = new (sessionId: string) => Error;

export interface SyncKairosStateManagerOptions extends Omit<ClientOptions, "baseUrl" | "apiKey"> {
  baseUrl: string;
  apiKey: string;
  /** Prepended to every session id on the server (isolates an application, or a test run). */
  keyPrefix?: string;
  /** The lifetime of created sessions, seconds (default: the server's SESSION_TTL). */
  ttlSeconds?: number;
  /** A codebase's own error classes, so that its `instanceof` checks keep working. */
  errors?: {
    ConcurrencyError?: ConcurrencyErrorClass;
    SessionNotFoundError?: SessionNotFoundErrorClass;
  };
}

/** Every string of `value` that looks like an ISO date-time, as a Date (in place for objects and arrays). */
export function reviveDates(value: unknown): unknown {
  if (typeof value === "string") return ISO_DATE_TIME.test(value) ? new Date(value) : value;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) value[i] = reviveDates(value[i]);
    return value;
  }
  if (typeof value === "object" && value !== null) {
    const record = value as Record<string, unknown>;
    for (const key of Object.keys(record)) record[key] = reviveDates(record[key]);
  }
  return value;
}

export class SyncKairosStateManager<S extends SyncKairosState = SyncKairosState> {
  private readonly client: SessionSyncClient;
  private readonly keyPrefix: string;
  private readonly ttlSeconds: number | undefined;
  private readonly ConcurrencyErrorClass: ConcurrencyErrorClass;
  private readonly SessionNotFoundErrorClass: SessionNotFoundErrorClass;
  private closed = false;

  constructor(options: SyncKairosStateManagerOptions) {
    const { keyPrefix, ttlSeconds, errors, ...clientOptions } = options;
    this.client = new SessionSyncClient(clientOptions);
    this.keyPrefix = keyPrefix ?? "";
    this.ttlSeconds = ttlSeconds;
    this.ConcurrencyErrorClass = errors?.ConcurrencyError ??
      (ConcurrencyError as unknown as ConcurrencyErrorClass);
    this.SessionNotFoundErrorClass = errors?.SessionNotFoundError ??
      (SessionNotFoundError as unknown as SessionNotFoundErrorClass);
  }

  /** The state, or null when the session does not exist (never did, was deleted, or expired). */
  async getSession(sessionId: string): Promise<S | null> {
    this.open();
    try {
      return this.toState(sessionId, await this.client.get(this.id(sessionId)));
    } catch (error) {
      if (error instanceof SessionNotFoundError) return null;
      throw error;
    }
  }

  /** Store `state` as a new session at version 1 (`state.session_id` names it). */
  async createSession(state: S): Promise<void> {
    this.open();
    const options: { sessionId: string; ttlSeconds?: number } = { sessionId: this.id(state.session_id) };
    if (this.ttlSeconds !== undefined) options.ttlSeconds = this.ttlSeconds;
    await this.client.create(this.fromState(state), options);
  }

  /**
   * Write `state`; the server assigns the next version.  At `expectedVersion`
   * when given, else at the version `state` was read at (`state.version`):
   * either way, if the session moved on, it rejects with
   * ConcurrencyError(sessionId, expectedVersion, actualVersion) and writes
   * nothing.  A session that does not exist (or was deleted, or expired)
   * rejects with SessionNotFoundError.
   */
  async updateSession(sessionId: string, state: S, expectedVersion?: number): Promise<void> {
    this.open();
    const version = expectedVersion ?? state.version;
    if (!Number.isSafeInteger(version) || version < 1) {
      throw new TypeError(`updateSession(${sessionId}): pass expectedVersion, or a state read by getSession ` +
        "(its version says which version the change applies to)");
    }
    try {
      await this.client.put(this.id(sessionId), this.fromState(state), version);
    } catch (error) {
      if (error instanceof PreconditionFailedError) {
        if (error.actualVersion === null) throw new this.SessionNotFoundErrorClass(sessionId);
        throw new this.ConcurrencyErrorClass(sessionId, version, error.actualVersion);
      }
      if (error instanceof SessionNotFoundError) throw new this.SessionNotFoundErrorClass(sessionId);
      throw error;
    }
  }

  /** Delete the session (a missing one is no error, as in the Node design). */
  async deleteSession(sessionId: string): Promise<void> {
    this.open();
    try {
      await this.client.delete(this.id(sessionId));
    } catch (error) {
      if (!(error instanceof SessionNotFoundError)) throw error;
    }
  }

  /** Stop: later calls reject.  No connection to release (fetch pools its own). */
  async close(): Promise<void> {
    this.closed = true;
  }

  private open(): void {
    if (this.closed) throw new Error("SyncKairosStateManager is closed");
  }

  private id(sessionId: string): string {
    return this.keyPrefix + sessionId;
  }

  /** The application's members of a state: what the server stores. */
  private fromState(state: S): State {
    const stored: State = { ...state };
    for (const member of SESSION_MEMBERS) delete stored[member];
    // a Date becomes its ISO string here, as JSON.stringify writes it (toJSON),
    // and comes back as a Date from reviveDates
    return stored;
  }

  private toState(sessionId: string, session: Session): S {
    const state = reviveDates(session.state) as State;
    return { ...state, session_id: sessionId, version: session.version, created_at: session.createdAt,
      updated_at: session.updatedAt } as S;
  }
}
