export type {
  Broker,
  BrokerMessage,
  FollowOptions,
  MessageHandler,
  OutgoingBrokerMessage,
  SubscribeOptions,
  Subscription,
} from "./broker/broker.ts";
export {
  checkOutgoingMessage,
  DEAD_LETTER_PROPERTIES,
  deadLetterTopic,
  MAX_PAYLOAD_BYTES,
  PayloadTooLargeError,
  Topics,
} from "./broker/broker.ts";
export type { EmbeddedBroker, EmbeddedBrokerOptions } from "./broker/embedded-broker.ts";
export { createEmbeddedBroker } from "./broker/embedded-broker.ts";
export type { ConfigOf, ConfigSpec, ConfigVar } from "./config.ts";
export {
  boolVar,
  ConfigError,
  durationVar,
  enumVar,
  intVar,
  loadConfig,
  optional,
  portVar,
  stringVar,
  urlVar,
} from "./config.ts";
export { toConnectError } from "./connect-error.ts";
export type { ErrorDetail, FieldViolation, ParleyErrorOptions } from "./errors.ts";
export {
  aborted,
  alreadyExists,
  deadlineExceeded,
  ERROR_DOMAIN,
  ErrorCode,
  errorCodeFromNumber,
  errorDetails,
  failedPrecondition,
  INTERNAL_ERROR_MESSAGE,
  internal,
  invalidArgument,
  isParleyError,
  isUnexpectedError,
  notFound,
  ParleyError,
  parleyErrorFromStatus,
  permissionDenied,
  resourceExhausted,
  toParleyError,
  toStatus,
  unauthenticated,
  unavailable,
  unimplemented,
} from "./errors.ts";
export type {
  GrpcCallOptions,
  GrpcChannelOptions,
  GrpcClientOptions,
  GrpcServiceClient,
} from "./grpc/client.ts";
export { closeChannel, createGrpcChannel, createGrpcClient } from "./grpc/client.ts";
export { fromGrpcError, STATUS_DETAILS_KEY, toGrpcError } from "./grpc/grpc-error.ts";
export { fileDescriptorSet } from "./grpc/reflection.ts";
export type { GrpcServer, GrpcServerOptions, GrpcServiceRegistration } from "./grpc/server.ts";
export { createGrpcServer, grpcService } from "./grpc/server.ts";
export type {
  GrpcCallContext,
  GrpcClient,
  GrpcMethodDefinition,
  GrpcServiceDefinition,
  GrpcServiceImplementation,
} from "./grpc/service-definition.ts";
export { toServiceDefinition } from "./grpc/service-definition.ts";
export type { TerminatorContext } from "./grpc/terminator.ts";
export { unimplementedService } from "./grpc/unimplemented.ts";
export { createParleyValidator, VALIDATION_FAILED, validateMessage } from "./grpc/validation.ts";
export { DIRECT_CONVERSATION_NAMESPACE, directConversationId, newGroupId, newMessageId } from "./ids.ts";
export type { Logger, LogLevel } from "./logging.ts";
export { createLogger, LOG_LEVELS, traceFields } from "./logging.ts";
export {
  CLIENT_MESSAGE_MAX_BYTES,
  CLIENT_REQUEST_MAX_WIRE_BYTES,
  INTERNAL_MESSAGE_MAX_BYTES,
} from "./message-limits.ts";
export type { Outbox, OutboxEvent, OutboxRecord, OutboxRelay } from "./outbox.ts";
export { createSqliteOutbox, startOutboxRelay } from "./outbox.ts";
export type { MemoryRateLimiterOptions, RateDecision, RateLimiter, RateRule } from "./rate-limit.ts";
export { createMemoryRateLimiter } from "./rate-limit.ts";
export { inTransaction, migrate, openSqlite } from "./sqlite.ts";
export type { StopTelemetry, TelemetryOptions } from "./telemetry.ts";
export { startTelemetry } from "./telemetry.ts";
