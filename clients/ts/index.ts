export type { Backoff, BackoffOptions } from "./backoff.ts";
export { createBackoff } from "./backoff.ts";
export type { FieldViolation } from "./client-error.ts";
export { ClientReason, ParleyClientError } from "./client-error.ts";
export type {
  ClientState,
  ClientStateStore,
  ConversationState,
  KeyValueStorage,
  SeqRange,
} from "./client-state.ts";
export {
  createMemoryStateStore,
  createWebStorageStateStore,
  parseClientState,
  serializeClientState,
} from "./client-state.ts";
export type { Clock, TimerHandle } from "./clock.ts";
export { systemClock } from "./clock.ts";
export type { ConnectionState, StateChange } from "./connection.ts";
export type { TransportFactory } from "./edge-transport.ts";
export type { Listener } from "./event-emitter.ts";
export type { GapEvent, GapReason, IncomingMessage, MessageSource } from "./inbound-pipeline.ts";
export { CLIENT_MESSAGE_MAX_BYTES, sendFrameBytes } from "./message-size.ts";
export type { AckTarget, ResendRequestInit, SendOutcome } from "./outbound.ts";
export type {
  ErrorEvent,
  ErrorOperation,
  ParleyClient,
  ParleyClientEvents,
  ParleyClientOptions,
  SendInput,
  SyncSummary,
} from "./parley-client.ts";
export { CLIENT_VERSION, createParleyClient } from "./parley-client.ts";
export type { TokenProvider } from "./token-source.ts";
