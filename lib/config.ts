/**
 * Typed configuration from environment variables. A process declares its variables once, loads
 * them at start-up and stops with every problem listed, each naming its variable, so a bad
 * deployment fails on the first try instead of on the first request.
 */

type Parsed<T> = { readonly ok: true; readonly value: T } | { readonly ok: false };

/** One environment variable: its name, what it must look like, and how to read it. */
export type ConfigVar<T> = {
  readonly name: string;
  /** Completes "NAME must be …", e.g. "an integer port 0-65535". */
  readonly expected: string;
  readonly required: boolean;
  /** Values of secrets are never echoed in errors. */
  readonly secret: boolean;
  readonly defaultValue: T | undefined;
  parse(raw: string): Parsed<T>;
};

export type ConfigSpec = Readonly<Record<string, ConfigVar<unknown>>>;

export type ConfigOf<S extends ConfigSpec> = {
  readonly [K in keyof S]: S[K] extends ConfigVar<infer T> ? T : never;
};

type VarOptions<T> = {
  readonly default?: T;
  /** Never echo the value in errors (passwords, keys, URLs with credentials). */
  readonly secret?: boolean;
};

function defineVar<T>(
  name: string,
  expected: string,
  parse: (raw: string) => Parsed<T>,
  options: VarOptions<T>,
): ConfigVar<T> {
  return {
    name,
    expected,
    required: options.default === undefined,
    secret: options.secret ?? false,
    defaultValue: options.default,
    parse,
  };
}

const ok = <T>(value: T): Parsed<T> => ({ ok: true, value });
const bad: Parsed<never> = { ok: false };

/** A variable that may be absent; absent reads as `undefined`. */
export function optional<T>(v: ConfigVar<T>): ConfigVar<T | undefined> {
  return { ...v, required: false, defaultValue: undefined };
}

export function stringVar(name: string, options: VarOptions<string> = {}): ConfigVar<string> {
  return defineVar(name, "a non-empty string", ok, options);
}

export function intVar(
  name: string,
  options: VarOptions<number> & { readonly min?: number; readonly max?: number } = {},
): ConfigVar<number> {
  const { min = Number.MIN_SAFE_INTEGER, max = Number.MAX_SAFE_INTEGER } = options;
  const range =
    options.min === undefined && options.max === undefined
      ? ""
      : options.max === undefined
        ? ` of at least ${min}`
        : options.min === undefined
          ? ` of at most ${max}`
          : ` ${min}-${max}`;
  return defineVar(name, `an integer${range}`, (raw) => parseInteger(raw, min, max), options);
}

export function portVar(name: string, options: VarOptions<number> = {}): ConfigVar<number> {
  return defineVar(name, "an integer port 0-65535", (raw) => parseInteger(raw, 0, 65535), options);
}

function parseInteger(raw: string, min: number, max: number): Parsed<number> {
  if (!/^[+-]?\d+$/.test(raw)) {
    return bad;
  }
  const value = Number(raw);
  return Number.isSafeInteger(value) && value >= min && value <= max ? ok(value) : bad;
}

const TRUE = new Set(["true", "1", "yes", "on"]);
const FALSE = new Set(["false", "0", "no", "off"]);

export function boolVar(name: string, options: VarOptions<boolean> = {}): ConfigVar<boolean> {
  return defineVar(
    name,
    "true or false (also 1/0, yes/no, on/off)",
    (raw) => {
      const lower = raw.toLowerCase();
      return TRUE.has(lower) ? ok(true) : FALSE.has(lower) ? ok(false) : bad;
    },
    options,
  );
}

export function enumVar<const V extends string>(
  name: string,
  values: readonly V[],
  options: VarOptions<NoInfer<V>> = {},
): ConfigVar<V> {
  return defineVar(
    name,
    `one of ${values.join(", ")}`,
    (raw) => ((values as readonly string[]).includes(raw) ? ok(raw as V) : bad),
    options,
  );
}

/** A URL, kept as written (URL parsing would add a trailing slash to bare origins). */
export function urlVar(
  name: string,
  options: VarOptions<string> & { readonly protocols?: readonly string[] } = {},
): ConfigVar<string> {
  const protocols = options.protocols?.map((p) => (p.endsWith(":") ? p : `${p}:`));
  const expected =
    protocols === undefined ? "an absolute URL" : `an absolute URL with scheme ${protocols.join(" or ")}`;
  return defineVar(
    name,
    expected,
    (raw) => {
      if (!URL.canParse(raw)) {
        return bad;
      }
      return protocols === undefined || protocols.includes(new URL(raw).protocol) ? ok(raw) : bad;
    },
    options,
  );
}

const UNIT_MS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** A duration such as `250ms`, `5s`, `1.5m` or `2h`, read as milliseconds. */
export function durationVar(name: string, options: VarOptions<number> = {}): ConfigVar<number> {
  return defineVar(
    name,
    "a duration like 500ms, 5s, 2m or 1h",
    (raw) => {
      const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(raw);
      const unit = match?.[2] === undefined ? undefined : UNIT_MS[match[2]];
      if (match?.[1] === undefined || unit === undefined) {
        return bad;
      }
      return ok(Math.round(Number(match[1]) * unit));
    },
    options,
  );
}

/** Thrown by `loadConfig` with every problem found, one per variable. */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
  readonly problems: readonly string[];

  constructor(problems: readonly string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  - ${p}`).join("\n")}`);
    this.problems = problems;
  }
}

/**
 * Reads every variable of `spec` from `env`. An empty value counts as unset, since deployment
 * templates often render absent settings as `NAME=`. Throws a ConfigError listing all problems.
 */
export function loadConfig<S extends ConfigSpec>(
  spec: S,
  env: Readonly<Record<string, string | undefined>> = process.env,
): ConfigOf<S> {
  const problems: string[] = [];
  const config: Record<string, unknown> = {};
  for (const [key, v] of Object.entries(spec)) {
    const raw = env[v.name];
    if (raw === undefined || raw === "") {
      if (v.required) {
        problems.push(`${v.name} is required: it must be ${v.expected}`);
      }
      config[key] = v.defaultValue;
      continue;
    }
    const parsed = v.parse(raw);
    if (parsed.ok) {
      config[key] = parsed.value;
    } else {
      problems.push(`${v.name} must be ${v.expected}, got ${v.secret ? "a value (not shown)" : `'${raw}'`}`);
    }
  }
  if (problems.length > 0) {
    throw new ConfigError(problems);
  }
  return config as ConfigOf<S>;
}
