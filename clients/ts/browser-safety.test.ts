// The SDK must run in browsers (design §7): no Node-only modules or globals in clients/ts, and only
// gen/ among our own code, followed transitively into gen/.
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const SDK = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(SDK, "../..");
const GEN = join(REPO, "gen");

/** Packages that run in browsers (subpaths included). connect-node is deliberately absent. */
const ALLOWED_PACKAGES = ["@bufbuild/protobuf", "@bufbuild/protovalidate/gen/", "@connectrpc/connect"];
const NODE_GLOBALS = /\b(Buffer|process\.|require\(|__dirname|__filename|setImmediate|global\.)/;

/** Every module specifier a source file imports or re-exports, static or dynamic. */
function specifiers(source: string): string[] {
  const found: string[] = [];
  const patterns = [
    /\b(?:import|export)\s[^;'"]*?\bfrom\s*["']([^"']+)["']/g,
    /\bimport\s*["']([^"']+)["']/g,
    /\bimport\s*\(\s*["']([^"']+)["']\s*\)/g,
  ];
  for (const pattern of patterns) {
    for (const match of source.matchAll(pattern)) {
      if (match[1] !== undefined) {
        found.push(match[1]);
      }
    }
  }
  return found;
}

/** What is wrong with one file of the SDK (or of gen/ it reaches), as readable lines. */
function problems(file: string, source: string): string[] {
  const absolute = resolve(REPO, file);
  const result: string[] = [];
  const code = source.replace(/\/\*[\s\S]*?\*\//g, "").replace(/(^|[^:])\/\/.*$/gm, "$1");
  for (const specifier of specifiers(code)) {
    if (specifier.startsWith(".")) {
      const target = resolve(dirname(absolute), specifier);
      if (!target.startsWith(SDK) && !target.startsWith(GEN)) {
        result.push(`${file}: imports ${specifier}, outside clients/ts and gen/`);
      }
    } else if (
      !ALLOWED_PACKAGES.some((p) => specifier === p || specifier.startsWith(p.endsWith("/") ? p : `${p}/`))
    ) {
      result.push(`${file}: imports ${specifier}, not a browser-safe dependency`);
    }
  }
  const global = NODE_GLOBALS.exec(code);
  if (global !== null) {
    result.push(`${file}: uses the Node-only ${global[1]}`);
  }
  return result;
}

function sdkFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) {
      return sdkFiles(path);
    }
    return entry.name.endsWith(".ts") && !entry.name.endsWith(".test.ts") ? [path] : [];
  });
}

describe("browser safety", () => {
  it("flags Node imports, Node globals and imports of lib/ (the check can fail)", () => {
    const file = join(SDK, "bad.ts");
    const bad = [
      'import { readFileSync } from "node:fs";',
      'import { EventEmitter } from "events";',
      'import { createConnectTransport } from "@connectrpc/connect-node";',
      'import { ParleyError } from "../../lib/errors.ts";',
      'export { x } from "../../services/history/handlers.ts";',
      "const bytes = Buffer.from('x');",
    ].join("\n");
    expect(problems(file, bad)).toHaveLength(6);
    expect(
      problems(file, 'import { create } from "@bufbuild/protobuf";\n// Buffer in a comment is fine'),
    ).toEqual([]);
  });

  it("clients/ts imports only browser-safe packages, itself and gen/ (transitively)", () => {
    const seen = new Set<string>();
    const queue = sdkFiles(SDK);
    const found: string[] = [];
    while (queue.length > 0) {
      const file = queue.pop() as string;
      if (seen.has(file)) {
        continue;
      }
      seen.add(file);
      const source = readFileSync(file, "utf8");
      found.push(...problems(relative(REPO, file), source));
      for (const specifier of specifiers(source)) {
        if (specifier.startsWith(".")) {
          queue.push(resolve(dirname(file), specifier));
        }
      }
    }
    expect(found).toEqual([]);
    expect([...seen].some((f) => f.startsWith(GEN))).toBe(true);
    expect(seen.size).toBeGreaterThan(20);
  });
});
