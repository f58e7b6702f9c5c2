// SessionSyncClient against a live `sessionsync serve` with its pipeline: every
// route, every error code a client can provoke, a PATCH whose answer is cut off
// after the server ran it (applied once), 32 concurrent updates (none lost), the
// cursor iterators across pages, the retry budget, and a session shared with the
// Python client.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  ConcurrencyError,
  ForbiddenError,
  IdempotencyKeyReusedError,
  PayloadTooLargeError,
  PreconditionFailedError,
  PreconditionRequiredError,
  RouteNotFoundError,
  ServiceUnavailableError,
  SessionExistsError,
  SessionExpiredError,
  SessionNotFoundError,
  SessionSyncClient,
  SessionSyncError,
  TransportError,
  UnauthorizedError,
  ValidationError,
  VERSION,
  type FetchLike,
  type SessionEvent,
} from "@sessionsync/client";

import { env, eventually, newId } from "./env.js";

const client = new SessionSyncClient({ baseUrl: env.url, apiKey: env.apiKey });
const quick = { attempts: 3, budgetMs: 5_000, backoffBaseMs: 50, backoffCapMs: 200 };

/** A fetch that records the method and path of every request it sends. */
function recording(): { fetch: FetchLike; sent: string[] } {
  const sent: string[] = [];
  return {
    sent,
    fetch: (input, init) => {
      sent.push(`${init.method} ${new URL(input).pathname}`);
      return fetch(input, init);
    },
  };
}

async function all<T>(iterable: AsyncIterable<T>): Promise<T[]> {
  const items: T[] = [];
  for await (const item of iterable) items.push(item);
  return items;
}

type Cart = { items: string[]; coupon?: string | null };

describe("every route", () => {
  test("create, read, replace, patch, touch, list, history, delete, revoke, health", async () => {
    const id = newId("routes");
    const owner = `${id}-owner`;
    const created = await client.create<Cart>({ items: [] }, { sessionId: id, ttlSeconds: 600 });
    assert.deepEqual([created.sessionId, created.version, created.state], [id, 1, { items: [] }]);
    assert.equal(created.etag, '"1"');
    assert.ok(created.expiresAt > created.updatedAt && created.requestId);

    const read = await client.get<Cart>(id);
    assert.equal(read.version, 1);
    assert.equal(await client.refresh(read), read, "a 304 keeps the copy held");

    const put = await client.put<Cart>(id, { items: ["book"] }, read.version);
    assert.deepEqual([put.version, put.state], [2, { items: ["book"] }]);
    await assert.rejects(client.put(id, { items: ["pen"] }, read.version), (error: unknown) => {
      assert.ok(error instanceof PreconditionFailedError && error instanceof ConcurrencyError);
      assert.deepEqual([error.status, error.expectedVersion, error.actualVersion], [412, 1, 2]);
      return true;
    });

    const patched = await client.patch<Cart>(id, { coupon: "SPRING" });
    assert.deepEqual([patched.version, patched.state], [3, { items: ["book"], coupon: "SPRING" }]);
    const removed = await client.patch<Cart>(id, { coupon: null }, { version: 3, ttlSeconds: 900 });
    assert.deepEqual([removed.version, removed.state, removed.ttlSeconds], [4, { items: ["book"] }, 900]);
    const touched = await client.touch<Cart>(id, { ttlSeconds: 1200 });
    assert.deepEqual([touched.version, touched.ttlSeconds, touched.state], [5, 1200, { items: ["book"] }]);

    const other = `${id}-put`;
    const made = await client.createIfAbsent(other, { n: 0 }, { ownerId: owner });
    assert.deepEqual([made.version, made.ownerId], [1, owner]);
    await assert.rejects(client.createIfAbsent(other, { n: 0 }), PreconditionFailedError);
    assert.deepEqual((await all(client.ownerSessions(owner))).map((s) => s.sessionId), [other]);

    const history = await eventually("five events", async () => {
      const events = await all(client.history<Cart>(id));
      return events.length >= 5 ? events : undefined;
    });
    assert.deepEqual(history.map((e: SessionEvent<Cart>) => [e.version, e.eventType]), [
      [5, "session_touched"], [4, "session_updated"], [3, "session_updated"], [2, "session_updated"],
      [1, "session_created"]]);
    assert.deepEqual(history[4]?.state, { items: [] });
    assert.ok(history[0] && history[0].persistedAt && history[0].persistedAt >= history[0].occurredAt);

    await client.delete(id, { version: 5 });
    await assert.rejects(client.get(id), (error: unknown) => {
      assert.ok(error instanceof SessionNotFoundError && error.deleted && error.status === 404);
      assert.equal(error.sessionId, id);
      return true;
    });
    const revoked = await client.revokeAll(owner);
    assert.deepEqual([revoked.deleted, revoked.calls], [1, 1]);
    assert.deepEqual(await all(client.ownerSessions(owner)), []);

    const health = await client.health();
    assert.ok(health.ok && health.httpStatus === 200 && "redis" in health.checks && "postgresql" in health.checks);
  });
});

describe("errors", () => {
  test("each error a client can provoke arrives as its class", async () => {
    const id = newId("errors");
    await client.create({ n: 0 }, { sessionId: id });
    await assert.rejects(client.get("no spaces allowed"), (error: unknown) => {
      assert.ok(error instanceof ValidationError && error.status === 400);
      assert.equal(error.details["field"], "session_id");
      return true;
    });
    await assert.rejects(client.put(id, { blob: "x".repeat(300 * 1024) }, 1), PayloadTooLargeError);
    await assert.rejects(client.put(id, { n: 1 }, null), PreconditionRequiredError);
    await assert.rejects(client.create({ n: 0 }, { sessionId: id }), (error: unknown) =>
      error instanceof SessionExistsError && error.sessionId === id && !error.deleted);
    await assert.rejects(client.get(`${id}-never`), (error: unknown) =>
      error instanceof SessionNotFoundError && !(error instanceof SessionExpiredError));
    await client.put(id, { n: 1 }, 1, { idempotencyKey: `${id}-key` });
    await assert.rejects(client.put(id, { n: 2 }, 2, { idempotencyKey: `${id}-key` }), IdempotencyKeyReusedError);
    await assert.rejects(new SessionSyncClient({ baseUrl: env.url }).get(id), UnauthorizedError);
    await assert.rejects(new SessionSyncClient({ baseUrl: env.url, apiKey: "not-the-key-0123456789" }).get(id),
      ForbiddenError);
    await assert.rejects(new SessionSyncClient({ baseUrl: `${env.url}/dev`, apiKey: env.apiKey }).get(id),
      RouteNotFoundError);

    const short = await client.create({ n: 0 }, { sessionId: `${id}-short`, ttlSeconds: 1 });
    // past its lifetime by the server's own clock, with a margin
    await new Promise((resolve) => setTimeout(resolve, short.expiresAt.getTime() - short.updatedAt.getTime() + 1000));
    await assert.rejects(client.get(short.sessionId), (error: unknown) =>
      error instanceof SessionExpiredError && error.expiresAt !== undefined);
  });

  test("a 503 is retried after its Retry-After within the budget, then thrown", async () => {
    const { fetch, sent } = recording();
    const patient = new SessionSyncClient({ baseUrl: env.unavailableUrl, apiKey: env.apiKey, fetch,
      retry: { attempts: 2, budgetMs: 30_000 } });
    await assert.rejects(patient.get("any"), (error: unknown) => {
      assert.ok(error instanceof ServiceUnavailableError && error.status === 503);
      assert.ok(error.retryAfter !== undefined && error.retryAfter >= 1);
      assert.equal(error.dependency, "redis");
      return true;
    });
    assert.deepEqual(sent, ["GET /sessions/any", "GET /sessions/any"]);

    const hurried = recording();
    const impatient = new SessionSyncClient({ baseUrl: env.unavailableUrl, apiKey: env.apiKey,
      fetch: hurried.fetch, retry: { attempts: 5, budgetMs: 500 } });
    await assert.rejects(impatient.get("any"), ServiceUnavailableError);
    assert.deepEqual(hurried.sent, ["GET /sessions/any"], "a Retry-After past the budget is not waited for");
  });

  test("no answer at all is a TransportError after the attempts", async () => {
    const { fetch, sent } = recording();
    const nowhere = new SessionSyncClient({ baseUrl: env.closedUrl, apiKey: env.apiKey, fetch, retry: quick });
    await assert.rejects(nowhere.create({ n: 0 }), (error: unknown) =>
      error instanceof TransportError && error.sent === false);
    assert.equal(sent.length, quick.attempts);
  });

  test("the package's version is the API's major version", async () => {
    const { readFile } = await import("node:fs/promises");
    const manifest = JSON.parse(await readFile(new URL("../../package.json", import.meta.url), "utf8"));
    assert.equal(VERSION, manifest.version);
    assert.equal(VERSION.split(".")[0], "1");
  });
});

describe("a reply cut off after the server wrote", () => {
  test("a PATCH is retried with its Idempotency-Key and applied exactly once", async () => {
    const id = env.cutSession;
    const { fetch, sent } = recording();
    const cut = new SessionSyncClient({ baseUrl: env.cutUrl, apiKey: env.apiKey, fetch, retry: quick });
    await cut.create({ clicks: 0, seen: [] }, { sessionId: id });
    // without a version the patch applies to whatever is current: sent twice
    // without its key, it would be applied twice (version 3)
    const patched = await cut.patch(id, { clicks: 1, seen: ["once"] });
    assert.deepEqual(sent, ["POST /sessions", `PATCH /sessions/${id}`, `PATCH /sessions/${id}`]);
    assert.ok(patched.replayed);
    assert.equal(patched.version, 2);
    assert.equal((await client.get(id)).version, 2);
  });
});

describe("the conflict loop under contention", () => {
  test("32 concurrent update() calls all land", async () => {
    const id = newId("contention");
    await client.create<{ items: number[] }>({ items: [] }, { sessionId: id });
    await Promise.all(Array.from({ length: 32 }, (_, n) =>
      client.update<{ items: number[] }>(id, (state) => ({ items: [...state.items, n] }), { attempts: 100 })));
    const final = await client.get<{ items: number[] }>(id);
    assert.deepEqual([...final.state.items].sort((a, b) => a - b), Array.from({ length: 32 }, (_, n) => n));
    assert.equal(final.version, 33);
    const persisted = await eventually("33 events", async () => {
      const events = await all(client.history(id, { pageSize: 500 }));
      return events.length >= 33 ? events : undefined;
    });
    assert.deepEqual(persisted.map((e) => e.version), Array.from({ length: 33 }, (_, n) => 33 - n));
  });

  test("update re-reads and re-applies after losing a race", async () => {
    const id = newId("race");
    await client.create<Cart>({ items: [] }, { sessionId: id });
    const seen: string[][] = [];
    const result = await client.update<Cart>(id, async (state) => {
      seen.push([...state.items]);
      if (seen.length === 1) await client.put<Cart>(id, { items: ["theirs"] }, 1);
      state.items.push("ours"); // in place: nothing returned
    });
    assert.deepEqual(seen, [[], ["theirs"]]);
    assert.deepEqual([result.version, result.state], [3, { items: ["theirs", "ours"] }]);
  });
});

describe("iterators", () => {
  test("history and owner listings follow the cursor across pages", async () => {
    const id = newId("pages");
    await client.create({ v: 1 }, { sessionId: id });
    for (let version = 1; version < 10; version++) await client.put(id, { v: version + 1 }, version);
    await eventually("ten events", async () =>
      (await client.historyPage(id, { limit: 500 })).events.length >= 10 ? true : undefined);
    const pages: number[][] = [];
    let cursor: string | null = null;
    for (let i = 0; i < 10; i++) {
      const page: Awaited<ReturnType<typeof client.historyPage>> = await client.historyPage(id, { cursor, limit: 3 });
      pages.push(page.events.map((e) => e.version));
      cursor = page.nextCursor;
      if (cursor === null) break;
    }
    assert.deepEqual(pages, [[10, 9, 8], [7, 6, 5], [4, 3, 2], [1]]);
    assert.deepEqual((await all(client.history(id, { pageSize: 3 }))).map((e) => e.version),
      Array.from({ length: 10 }, (_, n) => 10 - n));

    const owner = `${id}-owner`;
    const ids = Array.from({ length: 5 }, (_, n) => `${id}-${n}`).sort();
    for (const sessionId of ids) await client.create({}, { sessionId, ownerId: owner });
    assert.deepEqual((await all(client.ownerSessions(owner, { pageSize: 2 }))).map((s) => s.sessionId), ids);
    const first = await client.ownerSessionsPage(owner, { limit: 2 });
    assert.ok(first.sessions.length === 2 && first.nextCursor !== null);
  });

  test("an iterator stops on a cursor the server repeats", async () => {
    const looping: FetchLike = async () => new Response(JSON.stringify({
      session_id: "x", events: [], next_cursor: "v5", next_before_version: 5 }),
    { status: 200, headers: { "Content-Type": "application/json" } });
    const stuck = new SessionSyncClient({ baseUrl: "http://127.0.0.1:1", fetch: looping });
    await assert.rejects(all(stuck.history("x")), (error: unknown) =>
      error instanceof SessionSyncError && /twice/.test(error.message));
  });
});

describe("correlation", () => {
  test("a request id and a traceparent given to the client come back", async () => {
    const id = newId("trace");
    const traced = client.withHeaders({ "X-Request-Id": `${id}-req`,
      traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" });
    assert.equal((await traced.create({}, { sessionId: id })).requestId, `${id}-req`);
    await assert.rejects(traced.get(`${id}-never`), (error: unknown) =>
      error instanceof SessionNotFoundError && error.requestId === `${id}-req`);
  });
});

describe("with the Python client", () => {
  test("updates the session the Python client created, and creates one for it to update", async () => {
    const updated = await client.update<{ by: string[] }>(env.fromPython,
      (state) => ({ by: [...state.by, "typescript"] }));
    assert.deepEqual(updated.state.by, ["python", "typescript"]);
    const made = await client.create({ by: ["typescript"] }, { sessionId: `${env.run}-from-ts` });
    assert.equal(made.version, 1);
  });
});
