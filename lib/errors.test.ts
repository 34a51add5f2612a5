import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "../gen/google/rpc/error_details_pb.ts";
import { toConnectError } from "./connect-error.ts";
import {
  ERROR_DOMAIN,
  ErrorCode,
  errorCodeFromNumber,
  INTERNAL_ERROR_MESSAGE,
  invalidArgument,
  isUnexpectedError,
  notFound,
  ParleyError,
  parleyErrorFromStatus,
  resourceExhausted,
  toParleyError,
  toStatus,
} from "./errors.ts";

describe("ParleyError", () => {
  it("carries code, reason, metadata and violations", () => {
    const err = invalidArgument("BAD_THING", "bad thing", {
      metadata: { limit: "3" },
      violations: [{ field: "a.b", description: "must be set" }],
    });
    expect(err).toBeInstanceOf(ParleyError);
    expect(err).toBeInstanceOf(Error);
    expect(err.code).toBe("invalid_argument");
    expect(err.reason).toBe("BAD_THING");
    expect(err.message).toBe("bad thing");
    expect(err.metadata).toEqual({ limit: "3" });
    expect(err.violations).toEqual([{ field: "a.b", description: "must be set" }]);
  });

  it("maps codes to the gRPC numbers", () => {
    expect(ErrorCode.invalid_argument).toBe(3);
    expect(ErrorCode.unauthenticated).toBe(16);
    expect(errorCodeFromNumber(5)).toBe("not_found");
    expect(errorCodeFromNumber(99)).toBe("unknown");
  });
});

describe("toParleyError", () => {
  it("keeps a ParleyError as it is", () => {
    const err = notFound("CONVERSATION_NOT_FOUND", "no such conversation");
    expect(toParleyError(err)).toBe(err);
    expect(isUnexpectedError(err)).toBe(false);
  });

  it("turns anything else into internal with a generic message and the original as cause", () => {
    const boom = new Error("connection string postgres://secret@db");
    const mapped = toParleyError(boom);
    expect(mapped.code).toBe("internal");
    expect(mapped.reason).toBe("INTERNAL");
    expect(mapped.message).toBe(INTERNAL_ERROR_MESSAGE);
    expect(mapped.message).not.toContain("secret");
    expect(mapped.cause).toBe(boom);
    expect(isUnexpectedError(boom)).toBe(true);
  });
});

describe("google.rpc.Status", () => {
  it("round-trips reason, metadata, violations and retry delay", () => {
    const err = resourceExhausted("RATE_LIMITED", "slow down", {
      metadata: { limitPerMinute: "60" },
      violations: [{ field: "x", description: "too many", reason: "TOO_MANY" }],
      retryDelayMs: 1500,
    });
    const status = toStatus(err);
    expect(status.code).toBe(8);
    expect(status.message).toBe("slow down");
    expect(status.details.map((d) => d.typeUrl)).toEqual([
      "type.googleapis.com/google.rpc.ErrorInfo",
      "type.googleapis.com/google.rpc.BadRequest",
      "type.googleapis.com/google.rpc.RetryInfo",
    ]);
    const back = parleyErrorFromStatus(status.code, status.message, status.details);
    expect(back.code).toBe("resource_exhausted");
    expect(back.reason).toBe("RATE_LIMITED");
    expect(back.metadata).toEqual({ limitPerMinute: "60" });
    expect(back.violations).toEqual([{ field: "x", description: "too many", reason: "TOO_MANY" }]);
    expect(back.retryDelayMs).toBe(1500);
  });

  it("falls back to the code name as reason when there is no ErrorInfo", () => {
    const back = parleyErrorFromStatus(14, "down", []);
    expect(back.code).toBe("unavailable");
    expect(back.reason).toBe("UNAVAILABLE");
  });
});

describe("toConnectError", () => {
  it("sends the same code and details as gRPC", () => {
    const err = toConnectError(
      invalidArgument("VALIDATION_FAILED", "bad id", {
        violations: [{ field: "sender.user_id", description: "must be a user id" }],
      }),
    );
    expect(err).toBeInstanceOf(ConnectError);
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage).toBe("bad id");
    const [info] = err.findDetails(ErrorInfoSchema);
    expect(info?.reason).toBe("VALIDATION_FAILED");
    expect(info?.domain).toBe(ERROR_DOMAIN);
    const [badRequest] = err.findDetails(BadRequestSchema);
    expect(badRequest?.fieldViolations.map((v) => v.field)).toEqual(["sender.user_id"]);
    expect(err.findDetails(RetryInfoSchema)).toEqual([]);
  });

  it("hides unexpected errors behind internal and keeps them as cause", () => {
    const boom = new TypeError("cannot read properties of undefined (reading 'secret')");
    const err = toConnectError(boom);
    expect(err.code).toBe(Code.Internal);
    expect(err.rawMessage).toBe(INTERNAL_ERROR_MESSAGE);
    expect(err.cause).toBe(boom);
  });
});
