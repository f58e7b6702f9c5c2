// What the suite runs against, from the environment (tests/clients/test_typescript_client.py
// sets it after starting `sessionsync serve` with its pipeline): a missing variable fails the
// suite, it never skips.
import { randomUUID } from "node:crypto";

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run the suite through tests/clients/test_typescript_client.py`);
  return value;
}

export const env = {
  /** the server, with its pipeline */
  url: required("SESSIONSYNC_URL"),
  apiKey: required("SESSIONSYNC_API_KEY"),
  /** a proxy in front of the server that cuts the answer to the first PATCH of `cutSession` */
  cutUrl: required("SESSIONSYNC_CUT_URL"),
  cutSession: required("SESSIONSYNC_CUT_SESSION"),
  /** a server whose Redis does not answer: every session route is a 503 */
  unavailableUrl: required("SESSIONSYNC_UNAVAILABLE_URL"),
  /** a port nothing listens on */
  closedUrl: required("SESSIONSYNC_CLOSED_URL"),
  /** a session the Python client created, for this suite to update */
  fromPython: required("SESSIONSYNC_FROM_PYTHON"),
  /** this run's prefix: the ids this suite creates for the Python side to check */
  run: required("SESSIONSYNC_RUN"),
};

export function newId(label: string): string {
  return `ts-${label}-${randomUUID().slice(0, 12)}`;
}

export async function eventually<T>(what: string, probe: () => Promise<T | undefined>,
  timeoutMs = 30_000): Promise<T> {
  // the pipeline persists a change within a second or two; the margin is for a busy machine
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
