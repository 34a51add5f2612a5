import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createEdgeAuth } from "../../edge/auth/edge-auth.ts";
import { devIssuerAuthConfig, devIssuerKeyPath } from "../../edge/config.ts";

const script = resolve(import.meta.dirname, "mint-dev-token.ts");
let dataDir: string;
beforeEach(() => {
  dataDir = mkdtempSync(join(tmpdir(), "parley-token-"));
});
afterEach(() => rmSync(dataDir, { recursive: true, force: true }));

function run(...args: string[]) {
  const env: Record<string, string | undefined> = { ...process.env, PARLEY_DATA_DIR: dataDir };
  delete env.PARLEY_EDGE_JWT_ISSUER;
  delete env.PARLEY_EDGE_JWT_AUDIENCE;
  return spawnSync(process.execPath, [script, ...args], { env, encoding: "utf8" });
}

describe("npm run token", () => {
  it("prints a token the edge of the same data folder accepts, creating the key", async () => {
    const result = run("alice", "phone", "--ttl", "30m");
    expect(result.status).toBe(0);
    expect(statSync(devIssuerKeyPath(dataDir)).mode & 0o777).toBe(0o600);
    const token = result.stdout.trim();
    expect(token.split(".")).toHaveLength(3);
    expect(result.stderr).toContain("token for alice/phone, valid until");
    const auth = await createEdgeAuth(devIssuerAuthConfig(dataDir, {}));
    const caller = await auth.verifier.authenticate(`Bearer ${token}`);
    expect(caller.device).toMatchObject({ userId: "alice", deviceId: "phone" });
    const lifetime = caller.expiresAt.getTime() - caller.issuedAt.getTime();
    expect(lifetime).toBe(30 * 60_000);
  });

  it.each([
    [[], "give a user id and a device id"],
    [["alice"], "give a user id and a device id"],
    [["alice", "phone", "tablet"], "unexpected argument 'tablet'"],
    [["alice smith", "phone"], "user 'alice smith': must be a user id"],
    [["alice", "phone!"], "device 'phone!': must be a device id"],
    [["alice", "phone", "--ttl", "1 day"], "--ttl must be a duration like 30m, 24h or 720h, got '1 day'"],
    [["alice", "phone", "--ttl", "0s"], "the token's lifetime must be at least 1s"],
    [["alice", "phone", "--tll", "1h"], "Unknown option '--tll'"],
  ])("refuses %j with a usage error", (args, message) => {
    const result = run(...args);
    expect(result.status).toBe(64);
    expect(result.stdout).toBe("");
    expect(result.stderr).toContain(message);
    expect(result.stderr).toContain("usage: npm run -s token -- <user-id> <device-id> [--ttl 24h]");
  });
});
