/**
 * The largest client message the edge accepts: a Session frame (the SessionRequest) or a unary
 * request, 4 MiB in the binary protobuf encoding (session_service.proto). The frame that carries
 * a send is the biggest a valid client writes: pairwise ciphertexts to up to 5,000 devices.
 */
export const CLIENT_MESSAGE_MAX_BYTES = 4 * 1024 * 1024;

/**
 * The most the edge buffers of one request body as it arrived: the same message as JSON (bytes in
 * base64, a third larger, plus field names) takes more than its binary 4 MiB, and is measured in
 * binary once decoded (edge/message-size.ts).
 */
export const CLIENT_REQUEST_MAX_WIRE_BYTES = 8 * 1024 * 1024;

/**
 * The largest message an internal gRPC server or client receives. gRPC's usual default is 4 MiB,
 * the edge's own limit, but a hop adds to what the client sent (the sender's address, the
 * recipient devices, a traceparent), so an accepted client message must not be refused one hop
 * later with RESOURCE_EXHAUSTED: the internal limit leaves 1 MiB on top.
 */
export const INTERNAL_MESSAGE_MAX_BYTES = CLIENT_MESSAGE_MAX_BYTES + 1024 * 1024;

// The broker takes payloads up to 5 MiB too (MAX_PAYLOAD_BYTES, broker/broker.ts: Pulsar's own
// limit): a send's event is the client's message plus up to 5,000 recipient devices (under 0.7 MB
// with the longest ids the rules allow).
