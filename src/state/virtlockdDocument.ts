// relockd's state document → the document virtlockd 9.0 restores from
// (relockctl handback). What virtlockd's reader accepts was read from
// libvirt's lock_daemon.c, virlockspace.c, virnetserver*.c and
// virnetsocket.c and tried against the real binary (docs/takeover.md):
//
// - top level: `daemon` {servers: {admin, virtlockd}}, `defaultLockspace`,
//   `lockspaces`, `magic` (our pid: execve keeps it). Unknown keys would be
//   ignored, but we write none: the `relockd` object stays behind.
// - every required key of server, service, socket, client and resource as
//   9.0 writes it; lock clients' privateData with a non-null ownerName
//   (an unregistered client gets "" and ownerPid 0: virtlockd lets it
//   REGISTER later and can save it at its own next re-exec).
// - a resource name may appear once per lock space and a lock-space
//   directory once (virtlockd's hash insert fails: exit 3, or a silently
//   dropped lock space); relockd's tables guarantee both.
// - resource flags only SHARED (1) and AUTOCREATE (2).
// - at most 10 MiB (virFileReadAll's limit).
//
// What virtlockd does with relockd's OFD-locked lease fds: it never unlocks
// (it closes the fd, which releases an OFD lock held by that fd alone), it
// never re-locks an fd it restored, and on the last release of a SHARED +
// AUTOCREATE lease it tries a classic F_SETLK write upgrade, which conflicts
// with the fd's own OFD read lock: EAGAIN, so it leaves the (empty) lease
// file in place and closes. That is reported as a warning, not refused.

import { AcquireFlags } from '../locks/lockManager.js';
import type { ClientState, LockspaceState, ServerState, StateDocument } from './document.js';
import { serversOf } from './restore.js';

/** virtlockd reads at most this much state (virFileReadAll in virLockDaemonPostExecRestart). */
export const VIRTLOCKD_STATE_MAX = 10 * 1024 * 1024;

const KNOWN_FLAGS = AcquireFlags.SHARED | AcquireFlags.AUTOCREATE;

/** Why a handback cannot happen now; `transient` when it may clear by itself. */
export interface Refusal {
  reason: string;
  transient: boolean;
}

export interface VirtlockdConversion {
  text: string;
  /** Listening sockets, client sockets and lease fds virtlockd inherits. */
  fds: number[];
  resources: number;
  clients: number;
  warnings: string[];
}

export interface ConversionOptions {
  /** Admin clients to leave out (the relockctl connection asking for the handback: it closes at exec). */
  dropAdminClients?: ReadonlySet<number>;
}

/** The path virtlockd reads its state from (virLockDaemonExecRestartStatePath). */
export function virtlockdStateFile(privileged: boolean, env: NodeJS.ProcessEnv, home: string): string {
  if (privileged) return '/run/virtlockd-restart-exec.json';
  // virGetUserRuntimeDirectory: $XDG_RUNTIME_DIR/libvirt, else ~/.cache/libvirt (GLib's fallback)
  const base = env.XDG_RUNTIME_DIR || `${env.HOME || home}/.cache`;
  return `${base}/libvirt/virtlockd-restart-exec.json`;
}

export class ConversionRefused extends Error {
  override name = 'ConversionRefused';
  constructor(readonly refusals: Refusal[]) {
    super(refusals.map((r) => r.reason).join('; '));
  }

  get transient(): boolean {
    return this.refusals.every((r) => r.transient);
  }
}

/**
 * Converts, or throws ConversionRefused listing every reason at once.
 * Pure: the caller checks what needs the live system (peers alive).
 */
export function toVirtlockdDocument(doc: StateDocument, opts: ConversionOptions = {}): VirtlockdConversion {
  const ext = doc.relockd;
  const refusals: Refusal[] = [];
  const warnings: string[] = [];
  const refuse = (reason: string, transient = false) => refusals.push({ reason, transient });
  if (ext?.safeMode) refuse('relockd is in safe mode (a restore was incomplete): fix that first (relockctl status), virtlockd would not know the fds it keeps');
  if (ext && ext.orphans.length) refuse(`relockd keeps ${ext.orphans.length} inherited fd(s) it could not interpret (fds ${ext.orphans.map((o) => o.fd).join(', ')}); virtlockd has no record for them`);
  for (const t of ext?.terminations ?? []) {
    refuse(`owner ${t.owner.name || '?'} (pid ${t.owner.pid}) lost its connection and is being terminated; virtlockd cannot continue that`, true);
  }
  for (const c of ext?.clients ?? []) {
    if (opts.dropAdminClients?.has(c.id) && c.server === 'admin') continue;
    if (c.pending || c.unsent) refuse(`${c.server} client ${c.id} has a partly ${c.pending ? 'received request' : 'sent reply'}; virtlockd would read the stream from the middle`, true);
  }

  const fds: number[] = [];
  let resources = 0;
  const space = (ls: LockspaceState, dir: string): LockspaceState => {
    const names = new Set<string>();
    const out: LockspaceState = { ...(ls.directory !== undefined ? { directory: ls.directory } : {}), resources: [] };
    for (const r of ls.resources) {
      const where = `lease '${r.name}'${dir ? ` in ${dir}` : ''}`;
      if ((r.flags & ~KNOWN_FLAGS) !== 0) refuse(`${where} has flags 0x${r.flags.toString(16)} that virtlockd does not know`);
      if (!r.lockHeld) refuse(`${where} is recorded without its lock`);
      if (names.has(r.name)) refuse(`${where} appears twice; virtlockd would fail to restore`);
      names.add(r.name);
      const classic = ext?.resources.find((x) => x.fd === r.fd)?.classic === true || !ext;
      if (!classic && (r.flags & AcquireFlags.SHARED) && (r.flags & AcquireFlags.AUTOCREATE)) {
        warnings.push(`${where} is shared, autocreated and OFD-locked: virtlockd will release it but leave its empty lease file (its classic upgrade conflicts with the OFD lock); relockctl cleanup removes such files`);
      }
      fds.push(r.fd);
      resources++;
      out.resources.push({ name: r.name, path: r.path, fd: r.fd, lockHeld: true, flags: r.flags, owners: [...r.owners] });
    }
    return out;
  };
  const defaultLockspace = space(doc.defaultLockspace, '');
  const dirs = new Set<string>();
  const lockspaces = doc.lockspaces.map((ls) => {
    if (ls.directory === undefined || ls.directory === '') refuse('a directory lock space has no directory');
    else if (dirs.has(ls.directory)) refuse(`lock space ${ls.directory} appears twice; virtlockd would drop one with its locks`);
    dirs.add(ls.directory ?? '');
    return space(ls, ls.directory ?? '');
  });

  const { virtlockd, admin } = serversOf(doc);
  if (!virtlockd) throw new ConversionRefused([{ reason: 'the state has no lock server', transient: false }]);
  let clients = 0;
  const server = (st: ServerState, name: string, drop: ReadonlySet<number>): ServerState => {
    const socks = st.services.flatMap((s) => s.socks);
    for (const s of socks) fds.push(s.fd);
    const cs: ClientState[] = [];
    for (const c of st.clients) {
      if (c.id !== undefined && drop.has(c.id)) continue;
      if (name === 'virtlockd') {
        const pd = c.privateData as Partial<ClientState['privateData'] & { ownerName: string }>;
        if (typeof pd.ownerName !== 'string' || typeof pd.ownerUUID !== 'string') refuse(`lock client ${c.id} has no owner record`);
      }
      fds.push(c.sock.fd);
      clients++;
      cs.push({
        ...(c.id !== undefined ? { id: c.id } : {}),
        auth: 0,
        auth_pending: false,
        readonly: false,
        nrequests_max: 1,
        ...(c.conn_time ? { conn_time: c.conn_time } : {}),
        sock: { fd: c.sock.fd, errfd: -1, pid: 0, isClient: true, unlinkUNIX: false },
        privateData: c.privateData,
      });
    }
    return {
      min_workers: 0,
      max_workers: 0,
      priority_workers: 0,
      max_clients: st.max_clients,
      max_anonymous_clients: Math.min(st.max_anonymous_clients ?? st.max_clients, st.max_clients),
      keepaliveInterval: 4294967295,
      keepaliveCount: 0,
      next_client_id: st.next_client_id ?? 1,
      services: st.services.map((s) => ({
        auth: 0,
        readonly: false,
        nrequests_client_max: 1,
        socks: s.socks.map((k) => ({ fd: k.fd, errfd: -1, pid: 0, isClient: false, unlinkUNIX: k.unlinkUNIX ?? !k.isClient })),
      })),
      clients: cs,
    };
  };
  const servers: Record<string, ServerState> = {};
  if (admin) servers.admin = server(admin, 'admin', opts.dropAdminClients ?? new Set());
  servers.virtlockd = server(virtlockd, 'virtlockd', new Set());
  if (refusals.length) throw new ConversionRefused(refusals);

  // virtlockd 9.0's key order (yajl writes insertion order).
  const out = { daemon: { servers }, defaultLockspace, lockspaces, magic: doc.magic };
  const text = JSON.stringify(out, null, 2);
  if (Buffer.byteLength(text) > VIRTLOCKD_STATE_MAX) {
    throw new ConversionRefused([{ reason: `the state is ${Buffer.byteLength(text)} bytes; virtlockd reads at most ${VIRTLOCKD_STATE_MAX} and would exit, dropping every lock`, transient: false }]);
  }
  return { text, fds, resources, clients, warnings };
}
