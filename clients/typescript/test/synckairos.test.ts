// SyncKairosStateManager, the drop-in for the Node design's state manager,
// against the live server: its semantics (null for a missing session, dates
// revived, ConcurrencyError(sessionId, expectedVersion, actualVersion), a key
// prefix, a codebase's own error classes), and what it does better: no lost
// update among concurrent read-modify-write loops, no overwrite of a change
// the caller did not see, no re-creation of a deleted session.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, test } from "node:test";

import {
  ConcurrencyError,
  SessionExistsError,
  SessionNotFoundError,
  SessionSyncClient,
  SyncKairosStateManager,
  type SyncKairosState,
} from "@sessionsync/client";

import { env } from "./env.js";

interface SyncState extends SyncKairosState {
  sync_mode: string;
  status: string;
  participants: { participant_id: string; time_remaining_ms: number; has_gone: boolean }[];
  active_participant_id: string | null;
  total_time_ms: number;
  cycle_started_at: Date | null;
  session_started_at: Date | null;
}

// each test run in its own namespace, as the Node design's tests isolate theirs with a key prefix
const prefix = `ts-sk-${randomUUID().slice(0, 8)}:`;
const options = { baseUrl: env.url, apiKey: env.apiKey, keyPrefix: prefix };
const client = new SessionSyncClient({ baseUrl: env.url, apiKey: env.apiKey });

function newState(sessionId: string): SyncState {
  return {
    session_id: sessionId,
    version: 1,
    sync_mode: "per_participant",
    status: "pending",
    participants: [{ participant_id: "p1", time_remaining_ms: 60_000, has_gone: false }],
    active_participant_id: null,
    total_time_ms: 60_000,
    cycle_started_at: null,
    session_started_at: null,
    created_at: new Date(),
    updated_at: new Date(),
  };
}

describe("SyncKairosStateManager", () => {
  const manager = new SyncKairosStateManager<SyncState>(options);

  test("create, get with dates revived, update at the version read, delete", async () => {
    const id = `game-${randomUUID().slice(0, 8)}`;
    assert.equal(await manager.getSession(id), null);
    await manager.createSession(newState(id));

    const read = await manager.getSession(id);
    assert.ok(read);
    assert.deepEqual([read.session_id, read.version, read.status, read.cycle_started_at], [id, 1, "pending", null]);
    assert.ok(read.created_at instanceof Date && read.updated_at instanceof Date);

    const started = new Date("2026-01-31T12:00:00.000Z");
    await manager.updateSession(id, { ...read, status: "running", cycle_started_at: started,
      session_started_at: started }, read.version);
    const running = await manager.getSession(id);
    assert.ok(running);
    assert.equal(running.version, 2);
    assert.equal(running.status, "running");
    assert.ok(running.cycle_started_at instanceof Date, "an ISO date string comes back as a Date");
    assert.equal(running.cycle_started_at.getTime(), started.getTime());
    assert.ok(running.updated_at && read.updated_at && running.updated_at >= read.updated_at);

    // without expectedVersion it writes at the version the state was read at
    await manager.updateSession(id, { ...running, status: "paused" });
    assert.equal((await manager.getSession(id))?.version, 3);

    await manager.deleteSession(id);
    assert.equal(await manager.getSession(id), null);
    await manager.deleteSession(id); // a missing session is no error, as in the Node design
  });

  test("a moved version rejects with ConcurrencyError(sessionId, expectedVersion, actualVersion)", async () => {
    const id = `game-${randomUUID().slice(0, 8)}`;
    await manager.createSession(newState(id));
    const first = await manager.getSession(id);
    const second = await manager.getSession(id);
    assert.ok(first && second);
    await manager.updateSession(id, { ...first, status: "running" }, first.version);
    await assert.rejects(manager.updateSession(id, { ...second, status: "cancelled" }, second.version),
      (error: unknown) => {
        assert.ok(error instanceof ConcurrencyError);
        assert.deepEqual([error.name, error.sessionId, error.expectedVersion, error.actualVersion],
          ["ConcurrencyError", id, 1, 2]);
        return true;
      });
    // the Node design wrote this one over the other writer's change (no version
    // given: no check); here the state's own version is checked
    await assert.rejects(manager.updateSession(id, { ...second, status: "cancelled" }), ConcurrencyError);
    assert.equal((await manager.getSession(id))?.status, "running");
  });

  test("concurrent read-modify-write loops lose no update", async () => {
    // the Node design's recommended loop, with 20 writers: its update was a
    // read then a write, and lost most of these increments
    const id = `game-${randomUUID().slice(0, 8)}`;
    await manager.createSession(newState(id));
    const writers = 20;
    await Promise.all(Array.from({ length: writers }, async () => {
      for (let attempt = 0; attempt < 200; attempt++) {
        const state = await manager.getSession(id);
        assert.ok(state);
        try {
          await manager.updateSession(id, { ...state, total_time_ms: state.total_time_ms + 1 }, state.version);
          return;
        } catch (error) {
          if (!(error instanceof ConcurrencyError)) throw error;
          await new Promise((resolve) => setTimeout(resolve, Math.random() * 20));
        }
      }
      throw new Error("200 attempts lost");
    }));
    const final = await manager.getSession(id);
    assert.deepEqual([final?.total_time_ms, final?.version], [60_000 + writers, 1 + writers]);
  });

  test("a deleted session is never re-created: updating it is SessionNotFoundError", async () => {
    const id = `game-${randomUUID().slice(0, 8)}`;
    await manager.createSession(newState(id));
    const read = await manager.getSession(id);
    assert.ok(read);
    await manager.deleteSession(id);
    await assert.rejects(manager.updateSession(id, read, read.version), (error: unknown) =>
      error instanceof SessionNotFoundError && error.sessionId === id);
    await assert.rejects(manager.updateSession(`${id}-never`, read, 1), SessionNotFoundError);
    await assert.rejects(manager.createSession(newState(id)), SessionExistsError);
  });

  test("an update that names no version is refused, never written blindly", async () => {
    const id = `game-${randomUUID().slice(0, 8)}`;
    await manager.createSession(newState(id));
    const unread = { ...newState(id), status: "running" } as SyncState;
    delete (unread as Partial<SyncState>).version;
    await assert.rejects(manager.updateSession(id, unread), TypeError);
    assert.equal((await manager.getSession(id))?.status, "pending");
  });

  test("keyPrefix namespaces the ids on the server", async () => {
    const id = `game-${randomUUID().slice(0, 8)}`;
    const other = new SyncKairosStateManager<SyncState>({ ...options, keyPrefix: `${prefix}other:` });
    await manager.createSession(newState(id));
    assert.equal(await other.getSession(id), null);
    await other.createSession({ ...newState(id), status: "other" });
    assert.equal((await manager.getSession(id))?.status, "pending");
    assert.equal((await other.getSession(id))?.status, "other");
    assert.equal((await client.get(`${prefix}${id}`)).state["status"], "pending");
    assert.equal((await client.get(`${prefix}${id}`)).state["session_id"], undefined,
      "the session's own members are the server's, not stored in the state");
  });

  test("a codebase's own error classes are the ones thrown", async () => {
    class MyConcurrencyError extends Error {
      constructor(readonly sessionId: string, readonly expectedVersion: number, readonly actualVersion: number) {
        super(`conflict on ${sessionId}`);
      }
    }
    class MySessionNotFoundError extends Error {
      constructor(readonly sessionId: string) {
        super(`no ${sessionId}`);
      }
    }
    const mine = new SyncKairosStateManager<SyncState>({ ...options,
      errors: { ConcurrencyError: MyConcurrencyError, SessionNotFoundError: MySessionNotFoundError } });
    const id = `game-${randomUUID().slice(0, 8)}`;
    await mine.createSession(newState(id));
    const read = await mine.getSession(id);
    assert.ok(read);
    await mine.updateSession(id, read, read.version);
    await assert.rejects(mine.updateSession(id, read, read.version), (error: unknown) =>
      error instanceof MyConcurrencyError && error.expectedVersion === 1 && error.actualVersion === 2);
    await assert.rejects(mine.updateSession(`${id}-never`, read, 1), (error: unknown) =>
      error instanceof MySessionNotFoundError && error.sessionId === `${id}-never`);
  });

  test("close() ends the manager", async () => {
    const closing = new SyncKairosStateManager<SyncState>(options);
    await closing.close();
    await assert.rejects(closing.getSession("any"), /closed/);
  });
});
