// The README's TypeScript example, run by tests/clients/test_typescript_client.py
// against a live server from a project that installed the package's tarball.
//
//   SESSIONSYNC_URL=http://127.0.0.1:8000 SESSIONSYNC_API_KEY=... node quickstart.js
import { randomUUID } from "node:crypto";

import { ConcurrencyError, SessionSyncClient, SyncKairosStateManager } from "@sessionsync/client";

type Cart = { items: string[]; coupon?: string | null };

const baseUrl = process.env["SESSIONSYNC_URL"] ?? "http://127.0.0.1:8000";
const apiKey = process.env["SESSIONSYNC_API_KEY"] ?? "";
const sessions = new SessionSyncClient({ baseUrl, apiKey });
const cartId = `cart-${randomUUID().slice(0, 8)}`;

await sessions.create<Cart>({ items: [] }, { sessionId: cartId, ttlSeconds: 3600 });

// the conflict loop as one call: read, re-apply, write if unchanged
const cart = await sessions.update<Cart>(cartId, (state) => ({ ...state, items: [...state.items, "book"] }));

// a merge patch, merged on the server: no version needed
const patched = await sessions.patch<Cart>(cartId, { coupon: "SPRING" });

// a write at a version someone else moved on from: a ConcurrencyError, nothing lost
let conflict = "";
try {
  await sessions.put<Cart>(cartId, { items: [] }, cart.version);
} catch (error) {
  if (!(error instanceof ConcurrencyError)) throw error;
  conflict = `version ${error.expectedVersion} is stale: the session is at ${error.actualVersion}`;
}

// the Node design's state manager, one line changed
const manager = new SyncKairosStateManager({ baseUrl, apiKey, keyPrefix: "quickstart:" });
await manager.createSession({ session_id: cartId, version: 1, status: "pending", started_at: new Date() });
const state = await manager.getSession(cartId);
await manager.updateSession(cartId, { ...state!, status: "running" }, state!.version);

console.log(JSON.stringify({
  cart: patched.state,
  version: patched.version,
  conflict,
  managed: (await manager.getSession(cartId))?.status,
  startedAtIsDate: state!["started_at"] instanceof Date,
}));
