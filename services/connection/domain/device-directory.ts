/**
 * Where the connection service gets the devices and public identity keys it shows with an
 * ACCEPTED connection. The key service owns devices; this port keeps the domain unaware of how
 * they are fetched (a gRPC call to the key service in the mesh).
 */
export interface DeviceIdentityRecord {
  readonly deviceId: string;
  /** The current public identity key (33 bytes). */
  readonly identityKey: Uint8Array;
  readonly identityKeyCreatedAt: Date | undefined;
  /** The key it replaced while the rotation grace period lasts; empty otherwise. */
  readonly previousIdentityKey: Uint8Array;
  readonly previousIdentityKeyValidUntil: Date | undefined;
}

export interface DeviceDirectory {
  /**
   * The active devices of each of `userIds` (at most 1,000) as `callerUserId` may see them. Every
   * requested user gets an entry (an empty list when they have no device or may not be seen).
   * Throws a ParleyError (UNAVAILABLE) when the directory cannot answer.
   */
  identityKeys(
    callerUserId: string,
    userIds: readonly string[],
  ): Promise<ReadonlyMap<string, readonly DeviceIdentityRecord[]>>;
}

/** A directory that knows no devices: for tests and processes wired without a key service. */
export const noDevices: DeviceDirectory = {
  async identityKeys(_caller, userIds) {
    return new Map(userIds.map((id) => [id, []]));
  },
};
