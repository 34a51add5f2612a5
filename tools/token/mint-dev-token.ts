// `npm run -s token -- <user> <device> [--ttl 24h]`: prints a dev token for the embedded profile.
import { parseArgs } from "node:util";
import { durationVar } from "../../lib/config.ts";
import { DevTokenUsageError, mintDevToken } from "./dev-token.ts";

const USAGE = `usage: npm run -s token -- <user-id> <device-id> [--ttl 24h]

Prints a token (a JWT) signed by the dev issuer of PARLEY_DATA_DIR (default .data), creating its
key there if missing. Send it as 'Authorization: Bearer <token>' to the edge that \`npm start\` runs
on the same data folder.

  <user-id>, <device-id>  1 to 64 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit
  --ttl <duration>        lifetime, like 30m, 24h or 720h (default 24h)

Example: TOKEN=$(npm run -s token -- alice phone)`;

// EX_USAGE and EX_SOFTWARE from sysexits.h.
const EXIT_USAGE = 64;
const EXIT_FAILURE = 70;

function fail(message: string): never {
  process.stderr.write(`mint-dev-token: ${message}\n${USAGE.split("\n")[0]}\n(--help for more)\n`);
  process.exit(EXIT_USAGE);
}

let args: ReturnType<typeof parse>;
function parse() {
  return parseArgs({
    args: process.argv.slice(2),
    allowPositionals: true,
    options: { ttl: { type: "string", default: "24h" }, help: { type: "boolean", short: "h" } },
  });
}
try {
  args = parse();
} catch (err) {
  fail(err instanceof Error ? err.message : String(err));
}
if (args.values.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}
const [userId, deviceId, ...extra] = args.positionals;
if (userId === undefined || deviceId === undefined) fail("give a user id and a device id");
if (extra.length > 0) fail(`unexpected argument '${extra[0]}'`);
const ttl = durationVar("--ttl").parse(args.values.ttl);
if (!ttl.ok) fail(`--ttl must be a duration like 30m, 24h or 720h, got '${args.values.ttl}'`);

const dataDir = process.env.PARLEY_DATA_DIR || ".data";
try {
  const minted = await mintDevToken({ dataDir, userId, deviceId, ttlMs: ttl.value });
  process.stdout.write(`${minted.token}\n`);
  process.stderr.write(
    `token for ${userId}/${deviceId}, valid until ${minted.expiresAt.toISOString()} (iss ${minted.issuer}, aud ${minted.audience}, key ${minted.keyFile})\n`,
  );
} catch (err) {
  if (err instanceof DevTokenUsageError) fail(err.message);
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`mint-dev-token: ${message}\n`);
  process.exit(err instanceof Error && err.name === "ConfigError" ? 78 : EXIT_FAILURE);
}
