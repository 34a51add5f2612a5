import type { DescFile, DescMessage, DescService, MessageShape, Registry } from "@bufbuild/protobuf";
import { create, createRegistry } from "@bufbuild/protobuf";
import { pathToString } from "@bufbuild/protobuf/reflect";
import type { Validator, Violation } from "@bufbuild/protovalidate";
import { createValidator } from "@bufbuild/protovalidate";
import type { CallContext, ServerMiddleware, ServerMiddlewareCall } from "nice-grpc";
import { file_parley_common_v1_rules } from "../../gen/parley/common/v1/rules_pb.ts";
import type { FieldViolation } from "../errors.ts";
import { ParleyError } from "../errors.ts";

/** Reason of every request rejected by its protovalidate rules. */
export const VALIDATION_FAILED = "VALIDATION_FAILED";

// Violations beyond these are counted, not listed: error details travel in a trailer, and gRPC
// peers reject trailers over 8 KiB, so a request with thousands of bad ids must still get a
// readable answer rather than a transport error.
const MAX_VIOLATIONS_IN_DETAILS = 20;
const MAX_VIOLATIONS_IN_MESSAGE = 5;

/**
 * The files that define Parley's predefined rules (`(parley.common.v1.user_id)` and friends).
 * protovalidate refuses a rule extension it was not given, so every validator must know them.
 */
export const PREDEFINED_RULE_FILES: readonly DescFile[] = [file_parley_common_v1_rules];

/** A protovalidate validator that knows Parley's predefined rules, plus any extra files given. */
export function createParleyValidator(...extra: Array<DescFile | Registry>): Validator {
  return createValidator({
    registry: createRegistry(...PREDEFINED_RULE_FILES, ...extra),
    regexMatch: schemaRegexMatch,
  });
}

const CANONICAL_UUID_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";
const compiledPatterns = new Map<string, (against: string) => boolean>();

/**
 * protovalidate's default matcher is RE2 written in JavaScript: a push of 1,000 items spent 6.5%
 * of the edge's CPU in it, matching message ids. Every pattern it is asked for comes from our own
 * schemas (no client supplies one), so linear-time matching buys nothing here: ids get a
 * hand-written check, other patterns the platform's RegExp (unicode mode, which reads RE2's
 * `\p{..}` classes alike), compiled once. A pattern RegExp refuses throws, which the validation
 * middleware's warm-up turns into a start-up failure.
 */
export function schemaRegexMatch(pattern: string, against: string): boolean {
  let match = compiledPatterns.get(pattern);
  if (match === undefined) {
    match = compilePattern(pattern);
    compiledPatterns.set(pattern, match);
  }
  return match(against);
}

function compilePattern(pattern: string): (against: string) => boolean {
  if (pattern === CANONICAL_UUID_PATTERN) return isCanonicalUuid;
  const regex = new RegExp(pattern, "u");
  return (against) => regex.test(against);
}

/** 8-4-4-4-12 lowercase hex digits. */
export function isCanonicalUuid(value: string): boolean {
  if (value.length !== 36) return false;
  for (let i = 0; i < 36; i++) {
    const c = value.charCodeAt(i);
    if (i === 8 || i === 13 || i === 18 || i === 23) {
      if (c !== 45 /* - */) return false;
    } else if (!((c >= 48 && c <= 57) || (c >= 97 && c <= 102))) {
      return false;
    }
  }
  return true;
}

let shared: Validator | undefined;

function sharedValidator(): Validator {
  shared ??= createParleyValidator();
  return shared;
}

/**
 * Checks a message against the rules in its schema and throws an `invalid_argument` ParleyError
 * (reason VALIDATION_FAILED, one field violation per broken rule) when it breaks any. A rule that
 * cannot be evaluated is a bug in our schema, so it throws `internal`.
 */
export function validateMessage<Desc extends DescMessage>(
  schema: Desc,
  message: MessageShape<Desc>,
  validator: Validator = sharedValidator(),
): void {
  const result = validator.validate(schema, message);
  switch (result.kind) {
    case "valid":
      return;
    case "invalid":
      throw validationError(schema, result.violations);
    case "error":
      throw new ParleyError("internal", "VALIDATION_ERROR", `cannot validate ${schema.typeName}`, {
        cause: result.error,
      });
  }
}

function validationError(schema: DescMessage, violations: readonly Violation[]): ParleyError {
  return validationFailure(schema, violations.map(toFieldViolation));
}

/**
 * The error of a request that breaks its rules, as `validateMessage` throws it: `invalid_argument`,
 * reason VALIDATION_FAILED, the first violations listed in the message and in the details. For
 * hand-written checks (`RequestCheck`) that must answer exactly as protovalidate would.
 */
export function validationFailure(schema: DescMessage, fields: readonly FieldViolation[]): ParleyError {
  const listed = fields
    .slice(0, MAX_VIOLATIONS_IN_MESSAGE)
    .map((v) => `${v.field || "(message)"}: ${v.description}`);
  const more = fields.length - listed.length;
  const message = `invalid ${schema.name}: ${listed.join("; ")}${more > 0 ? `; and ${more} more` : ""}`;
  return new ParleyError("invalid_argument", VALIDATION_FAILED, message, {
    violations: fields.slice(0, MAX_VIOLATIONS_IN_DETAILS),
    metadata: { violationCount: String(fields.length) },
  });
}

function toFieldViolation(v: Violation): FieldViolation {
  return {
    field: pathToString(v.field),
    description: v.message,
    // google.rpc wants UPPER_SNAKE reasons; rule ids look like `bytes.max_len`.
    reason: v.ruleId.replace(/[^A-Za-z0-9]+/g, "_").toUpperCase(),
  };
}

/**
 * A hand-written check of one method's requests that stands in for protovalidate: it must enforce
 * every rule of the request's schema and throw what `validateMessage` would (`validationFailure`).
 * Only for hot internal methods where the generic evaluation costs too much (EdgePushService.PushBatch).
 */
export type RequestCheck = (request: never) => void;

/**
 * Server middleware that validates every request message (each message of a client stream) of
 * the given services before the handler sees it: with protovalidate, or with the `checks` given
 * for some methods (by path, `/package.Service/Method`). Methods of other services (health,
 * reflection) pass untouched.
 */
export function createValidationMiddleware(
  services: readonly DescService[],
  validator: Validator = sharedValidator(),
  checks: ReadonlyMap<string, RequestCheck> = new Map(),
): ServerMiddleware {
  const checkByPath = new Map<string, (message: unknown) => void>();
  for (const service of services) {
    for (const method of service.methods) {
      const path = `/${service.typeName}/${method.name}`;
      const custom = checks.get(path) as ((message: unknown) => void) | undefined;
      const schema = method.input;
      checkByPath.set(
        path,
        custom ?? ((message) => validateMessage(schema, message as MessageShape<DescMessage>, validator)),
      );
      // Compiles the rules now rather than on the first request, and fails at start-up when a
      // schema uses a rule this validator does not know.
      const warmUp = validator.validate(method.input, create(method.input));
      if (warmUp.kind === "error") {
        throw new Error(`cannot validate ${method.input.typeName}: ${warmUp.error.message}`, {
          cause: warmUp.error,
        });
      }
    }
  }
  for (const path of checks.keys()) {
    if (!checkByPath.has(path)) throw new Error(`a request check for ${path}, which no service here has`);
  }
  return async function* validationMiddleware<Req, Res>(
    call: ServerMiddlewareCall<Req, Res>,
    context: CallContext,
  ) {
    const check = checkByPath.get(call.method.path);
    if (check === undefined) {
      return yield* call.next(call.request, context);
    }
    if (!call.requestStream) {
      check(call.request);
      return yield* call.next(call.request, context);
    }
    return yield* call.next(validatedStream(call.request, check), context);
  };
}

async function* validatedStream<T>(source: AsyncIterable<T>, check: (message: T) => void): AsyncGenerator<T> {
  for await (const message of source) {
    check(message);
    yield message;
  }
}
