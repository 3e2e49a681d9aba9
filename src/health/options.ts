// Settings of the lock-space health watch and of what happens to owners when
// a lock space fails, and the timing rule that ties them to the NFSv4 lease
// time: every owner of a failed lock space must have stopped writing (been
// made safe, or SIGKILLed) before the server may give its locks to another
// host. See docs/storage-failure.md for the timeline.

/** What relockd does to an owner holding leases in a lock space that failed. */
export type LockFailureAction = 'killpath' | 'pause' | 'terminate' | 'ignore';

export interface HealthOptions {
  /** Probe every watched lock space this often (lockspace_check_interval). */
  checkIntervalMs: number;
  /** failing -> failed after this long without a good probe (lockspace_failure_timeout). */
  failureTimeoutMs: number;
  action: LockFailureAction;
  /** killpath = "/path/prog ARGS": program and its leading arguments; null: none configured. */
  killpath: string[] | null;
  /** After the killpath program started, how long the owner may keep leases before SIGTERM (kill_grace). */
  killGraceMs: number;
  /** The NFSv4 lease time assumed when the mount does not tell (nfs_lease_time). */
  nfsLeaseTimeMs: number;
  /** libvirt connection URI for the pause action (libvirt_uri). */
  libvirtUri: string;
}

export const DEFAULT_HEALTH: Readonly<HealthOptions> = Object.freeze({
  checkIntervalMs: 10_000,
  failureTimeoutMs: 60_000,
  // pause: the VM keeps its memory and can resume when the storage returns;
  // if pausing fails, kill_grace escalates to SIGTERM/SIGKILL, so safety
  // never depends on libvirt answering.
  action: 'pause',
  killpath: null,
  // sanlock uses 40 s against a 140 s takeover; with NFSv4's 90 s lease and a
  // 60 s failure timeout, 15 s leaves the margin (see requiredLeaseTimeMs).
  killGraceMs: 15_000,
  nfsLeaseTimeMs: 90_000,
  libvirtUri: 'qemu:///system',
} satisfies HealthOptions) as Readonly<HealthOptions>;

/** Splits killpath = "/path/prog ARGS" on spaces, as sanlock does. */
export function parseKillpath(s: string): string[] {
  const parts = s.split(' ').filter((p) => p !== '');
  if (parts.length === 0) throw new Error('killpath is empty');
  if (!parts[0]!.startsWith('/')) throw new Error(`killpath must name a program by absolute path: '${parts[0]}'`);
  return parts;
}

/** Time left between the owner's SIGKILL and the earliest takeover, for SIGKILL delivery and clocks. */
export function safetyMarginMs(leaseTimeMs: number): number {
  return Math.max(1000, Math.ceil(leaseTimeMs / 10));
}

/**
 * When, after the last good probe, the owner's writes are certainly over:
 * failed at failureTimeout; the action's grace; then SIGTERM and, after
 * termGrace, SIGKILL. 'ignore' gives no such bound (null).
 */
export function writesEndByMs(h: HealthOptions, termGraceMs: number): number | null {
  switch (h.action) {
    case 'ignore':
      return null;
    case 'terminate':
      return h.failureTimeoutMs + termGraceMs;
    default:
      return h.failureTimeoutMs + h.killGraceMs + termGraceMs;
  }
}

/**
 * Problems with the timing against a lease time, as messages ([] = fine).
 * The rule: writes end, plus the margin, no later than the lease time.
 */
export function timingProblems(h: HealthOptions, termGraceMs: number, leaseTimeMs = h.nfsLeaseTimeMs): string[] {
  const out: string[] = [];
  const s = (ms: number) => `${+(ms / 1000).toFixed(1)} s`;
  if (h.action === 'killpath' && !h.killpath) out.push("lock_failure_action = \"killpath\" needs killpath = \"/path/prog ARGS\"");
  if (h.checkIntervalMs >= h.failureTimeoutMs) out.push(`lockspace_check_interval (${s(h.checkIntervalMs)}) must be shorter than lockspace_failure_timeout (${s(h.failureTimeoutMs)})`);
  const end = writesEndByMs(h, termGraceMs);
  if (end !== null) {
    const margin = safetyMarginMs(leaseTimeMs);
    if (end + margin > leaseTimeMs) {
      const parts = h.action === 'terminate' ? `lockspace_failure_timeout ${s(h.failureTimeoutMs)} + owner_term_grace ${s(termGraceMs)}` : `lockspace_failure_timeout ${s(h.failureTimeoutMs)} + kill_grace ${s(h.killGraceMs)} + owner_term_grace ${s(termGraceMs)}`;
      out.push(`${parts} + margin ${s(margin)} = ${s(end + margin)} exceeds the NFSv4 lease time ${s(leaseTimeMs)}: another host could take a lease while its owner here still writes; lower the timeouts or raise nfs_lease_time only if the server's lease time is longer`);
    }
  }
  return out;
}

/**
 * The failure timeout to use on a mount whose lease time is `leaseTimeMs`
 * (read from the mount): the configured one, shortened if needed so that the
 * owner is still gone before that lease time (never below one check).
 */
export function effectiveFailureTimeoutMs(h: HealthOptions, termGraceMs: number, leaseTimeMs: number | null): number {
  if (leaseTimeMs === null) return h.failureTimeoutMs;
  const end = writesEndByMs(h, termGraceMs);
  if (end === null) return h.failureTimeoutMs;
  const over = end + safetyMarginMs(leaseTimeMs) - leaseTimeMs;
  if (over <= 0) return h.failureTimeoutMs;
  return Math.max(Math.min(h.checkIntervalMs, h.failureTimeoutMs), h.failureTimeoutMs - over);
}
