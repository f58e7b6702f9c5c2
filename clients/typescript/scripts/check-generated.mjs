// src/generated/openapi.ts is what openapi-typescript makes of docs/openapi.yaml
// today: regenerate it aside and compare (`npm run generate` updates it).
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);
const cli = join(dirname(require.resolve("openapi-typescript/package.json")), "bin", "cli.js");
const scratch = mkdtempSync(join(tmpdir(), "openapi-ts-"));
try {
  const fresh = join(scratch, "openapi.ts");
  execFileSync(process.execPath, [cli, join(root, "..", "..", "docs", "openapi.yaml"), "--output", fresh],
    { stdio: ["ignore", "ignore", "inherit"] });
  if (readFileSync(fresh, "utf8") !== readFileSync(join(root, "src", "generated", "openapi.ts"), "utf8")) {
    console.error("src/generated/openapi.ts is out of date with docs/openapi.yaml: run `npm run generate`");
    process.exit(1);
  }
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
