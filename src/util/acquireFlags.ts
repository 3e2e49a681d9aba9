// ACQUIRE_RESOURCE's flags (lock_protocol.x: VIR_LOCK_SPACE_PROTOCOL_ACQUIRE_RESOURCE_*),
// here below both the lock manager and relockctl, which sends them.

export const AcquireFlags = {
  SHARED: 1,
  AUTOCREATE: 2,
} as const;
