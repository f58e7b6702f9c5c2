/**
 * @sessionsync/client: the sessionsync HTTP API for TypeScript and
 * JavaScript (ESM and CommonJS), with no runtime dependency beyond `fetch`.
 *
 * - `SessionSyncClient`: typed sessions, an Idempotency-Key on every write,
 *   safe retries (Retry-After, a bounded budget), the conflict loop as one
 *   call (`update`), merge patches, stale reads, cursor iterators.
 * - `SyncKairosStateManager`: a drop-in for the Node design's state manager.
 * - One error class per problem code of the API (`ConcurrencyError`, ...).
 */
export {
  SessionSyncClient,
  DEFAULT_RETRY,
  VERSION,
  retryAfterMs,
  type ClientOptions,
  type FetchLike,
  type RetryPolicy,
  type Version,
  type WriteOptions,
} from "./client.js";
export * from "./errors.js";
export type {
  EventPage,
  EventType,
  Health,
  RevokeResult,
  Session,
  SessionEvent,
  SessionPage,
  State,
} from "./models.js";
export {
  SyncKairosStateManager,
  reviveDates,
  type ConcurrencyErrorClass,
  type SessionNotFoundErrorClass,
  type SyncKairosState,
  type SyncKairosStateManagerOptions,
} from "./synckairos.js";
export type { components, paths, operations } from "./generated/openapi.js";
