// The three RPC programs as the wire drift tests see them: the server's
// table (through the Program interface of src/rpc/program.ts: procedure
// number, name, decodeArgs, encodeRet), the client side's encoders and
// decoders (what relockctl / LockspaceClient / AdminClient use), and the .x
// file each is checked against. When the tables are reshaped, only the
// `client` maps below may need their codec names updated.

import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Program } from '../../src/rpc/program.js';
import { XdrReader, XdrWriter } from '../../src/rpc/xdr.js';
import { lockspaceProgram, codec, uuidToString } from '../../src/protocol/lockspace.js';
import type { LockManager } from '../../src/locks/lockManager.js';
import {
  ADMIN_CLIENT_INFO_PARAMETERS_MAX,
  ADMIN_SERVER_CLIENT_LIMITS_MAX,
  ADMIN_SERVER_THREADPOOL_PARAMETERS_MAX,
  adminCodec,
  adminProgram,
} from '../../src/protocol/admin.js';
import type { AdminBackend } from '../../src/protocol/admin.js';
import { relockdAdminProgram, relockdCodec } from '../../src/protocol/relockdAdmin.js';
import type { RelockdAdminBackend } from '../../src/protocol/relockdAdmin.js';
import { parseX, resolve } from './xdrSpec.js';
import type { XSpec, XType } from './xdrSpec.js';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const FIXTURES = join(ROOT, 'test', 'fixtures', 'wire');

type Enc = (w: XdrWriter, v: any) => unknown;
type Dec = (r: XdrReader) => unknown;

export interface ClientSide {
  /** Absent: the call has no arguments (empty payload). */
  encodeArgs?: Enc;
  /** Absent: the reply is void (empty payload). */
  decodeRet?: Dec;
}

export interface WireProgram {
  /** Fixture directory name. */
  key: 'lockspace' | 'admin' | 'relockd-admin';
  program: Program<any>;
  client: ReadonlyMap<number, ClientSide>;
  /** The .x file, relative to the repository root. */
  xFile: string;
  /** Enum prefix of the procedure constants, e.g. ADMIN_PROC_. */
  procPrefix: string;
  /** Prefix of the args/ret struct names (compared without case and underscores). */
  structPrefix: string;
  /** Constant names of the program number and version in the .x file. */
  progConst: string;
  versConst: string;
  /** Table field name → .x field name, where they differ beyond camelCase ("struct.field"). */
  aliases: Readonly<Record<string, string>>;
}

// The tables need a backend only to run handlers; these tests never run one.
const noManager = {} as LockManager;
const noAdminBackend = {} as AdminBackend;
const noRelockdBackend = {} as RelockdAdminBackend;

const tp = adminCodec.params(ADMIN_SERVER_THREADPOOL_PARAMETERS_MAX);
const tpSet = adminCodec.serverParams(ADMIN_SERVER_THREADPOOL_PARAMETERS_MAX);
const limits = adminCodec.params(ADMIN_SERVER_CLIENT_LIMITS_MAX);
const limitsSet = adminCodec.serverParams(ADMIN_SERVER_CLIENT_LIMITS_MAX);
const info = adminCodec.params(ADMIN_CLIENT_INFO_PARAMETERS_MAX);

const side = (encodeArgs?: Enc, decodeRet?: Dec): ClientSide => ({ ...(encodeArgs && { encodeArgs }), ...(decodeRet && { decodeRet }) });

export const wirePrograms: readonly WireProgram[] = [
  {
    key: 'lockspace',
    program: lockspaceProgram({ manager: noManager }),
    client: new Map([
      [1, side(codec.register.encode)],
      [2, side(codec.flags.encode)],
      [3, side(codec.path.encode)],
      [4, side(codec.resource.encode)],
      [5, side(codec.resource.encode)],
      [6, side(codec.resource.encode)],
      [7, side(codec.resource.encode)],
      [8, side(codec.lockspace.encode)],
    ]),
    xFile: 'protocol/libvirt/lock_protocol.x',
    procPrefix: 'VIR_LOCK_SPACE_PROTOCOL_PROC_',
    structPrefix: 'virLockSpaceProtocol',
    progConst: 'VIR_LOCK_SPACE_PROTOCOL_PROGRAM',
    versConst: 'VIR_LOCK_SPACE_PROTOCOL_PROGRAM_VERSION',
    aliases: {},
  },
  {
    key: 'admin',
    program: adminProgram(noAdminBackend),
    client: new Map([
      [1, side(adminCodec.flags.encode)],
      [2, side()],
      [3, side(undefined, adminCodec.libVersion.decode)],
      [4, side(adminCodec.list.encode, adminCodec.listServers.decode)],
      [5, side(adminCodec.lookupServer.encode, adminCodec.serverRet.decode)],
      [6, side(adminCodec.server.encode, tp.decode)],
      [7, side(tpSet.encode)],
      [8, side(adminCodec.listClients.encode, adminCodec.listClientsRet.decode)],
      [9, side(adminCodec.lookupClient.encode, adminCodec.clientRet.decode)],
      [10, side(adminCodec.client.encode, info.decode)],
      [11, side(adminCodec.client.encode)],
      [12, side(adminCodec.server.encode, limits.decode)],
      [13, side(limitsSet.encode)],
      [14, side(adminCodec.flags.encode, adminCodec.loggingOutputs.decode)],
      [15, side(adminCodec.flags.encode, adminCodec.loggingFilters.decode)],
      [16, side(adminCodec.optString.encode)],
      [17, side(adminCodec.optString.encode)],
      [18, side(adminCodec.server.encode)],
      [19, side(adminCodec.timeout.encode)],
    ]),
    xFile: 'protocol/libvirt/admin_protocol.x',
    procPrefix: 'ADMIN_PROC_',
    structPrefix: 'admin_',
    progConst: 'ADMIN_PROGRAM',
    versConst: 'ADMIN_PROTOCOL_VERSION',
    aliases: {
      'admin_connect_set_logging_outputs_args.value': 'outputs',
      'admin_connect_set_logging_filters_args.value': 'filters',
    },
  },
  {
    key: 'relockd-admin',
    program: relockdAdminProgram(noRelockdBackend),
    client: new Map([
      [1, side(relockdCodec.flags.encode, relockdCodec.daemonInfo.decode)],
      [2, side(relockdCodec.flags.encode, relockdCodec.lockspaces.decode)],
      [3, side(relockdCodec.filter.encode, relockdCodec.resources.decode)],
      [4, side(relockdCodec.filter.encode, relockdCodec.clients.decode)],
      [5, side(relockdCodec.flags.encode, relockdCodec.reexecResult.decode)],
      [6, side(relockdCodec.handbackArgs.encode, relockdCodec.handbackRefused.decode)],
      [16, side(relockdCodec.flags.encode, relockdCodec.text.decode)],
      [20, side(relockdCodec.flags.encode, relockdCodec.health.decode)],
      [21, side(relockdCodec.releaseOwner.encode, relockdCodec.count.decode)],
    ]),
    xFile: 'protocol/relockd_admin_protocol.x',
    procPrefix: 'RELOCKD_ADMIN_PROC_',
    structPrefix: 'relockd_admin_',
    progConst: 'RELOCKD_ADMIN_PROGRAM',
    versConst: 'RELOCKD_ADMIN_PROTOCOL_VERSION',
    aliases: { 'relockd_daemon_info.version': 'daemon_version' },
  },
];

export function loadSpec(p: WireProgram, src?: string): XSpec {
  return parseX(src ?? readFileSync(join(ROOT, p.xFile), 'utf8'));
}

const squash = (s: string) => s.replace(/_/g, '').toLowerCase();

/** The args/ret type of a procedure (by libvirt's naming rule); void when the .x has no such struct. */
export function procStruct(spec: XSpec, p: WireProgram, procName: string, which: 'args' | 'ret'): { name: string; type: XType } | null {
  const want = squash(`${p.structPrefix}${procName}${which}`);
  for (const name of spec.types.keys()) if (squash(name) === want) return { name, type: { kind: 'ref', name } };
  return null;
}

/** Procedures of the .x: name (without prefix) → number. */
export function specProcedures(spec: XSpec, p: WireProgram): Map<string, number> {
  const out = new Map<string, number>();
  for (const [k, v] of spec.procedures) if (k.startsWith(p.procPrefix)) out.set(k.slice(p.procPrefix.length), v);
  return out;
}

// ---- encode / decode through our codec ------------------------------------------------

export function encodeWith(enc: Enc | undefined, v: unknown): Buffer {
  if (!enc) return Buffer.alloc(0);
  const w = new XdrWriter();
  enc(w, v);
  return Buffer.from(w.bytes());
}

/** Decodes with our codec; `rest` is what the decoder left unread (must be 0). */
export function decodeWith(dec: Dec | undefined, b: Buffer): { value: unknown; rest: number } {
  if (!dec) return { value: undefined, rest: b.length };
  const r = new XdrReader(b);
  const value = dec(r);
  return { value, rest: r.remaining };
}

// ---- comparing a .x-shaped value with a table-shaped one ------------------------------

const camel = (s: string) => s.replace(/_([a-z])/g, (_m, c: string) => c.toUpperCase());
const isObj = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v) && !Buffer.isBuffer(v) && !(v instanceof Uint8Array);

/** admin_typed_param_value arm → the table's TypedParam type name. */
const ARM_TYPE: Record<string, string> = { i: 'int', ui: 'uint', l: 'llong', ul: 'ullong', d: 'double', b: 'boolean', s: 'string' };

const show = (v: unknown) =>
  typeof v === 'bigint' ? `${v}n` : Buffer.isBuffer(v) ? `<${v.toString('hex')}>` : JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? `${x}n` : x));

/**
 * Differences between a value decoded by the .x (xv) and the table's value
 * (tv) of the same bytes: field names (camelCase, aliases), nesting (a
 * one-field struct may be flattened), types and values. Empty = the same.
 */
export function semanticDiff(spec: XSpec, p: WireProgram, type: XType, xv: unknown, tv: unknown, path = '$'): string[] {
  const out: string[] = [];
  const cmp = (t0: XType, x: any, v: any, at: string, structName?: string): void => {
    const named = t0.kind === 'ref' ? t0.name : structName;
    const t = resolve(spec, t0);
    const bad = (why: string): void => {
      out.push(`${at}: ${why} (.x ${show(x)}, table ${show(v)})`);
    };
    switch (t.kind) {
      case 'struct': {
        const keyOf = (f: string) => {
          for (const [k, xf] of Object.entries(p.aliases)) if (k.startsWith(`${named}.`) && xf === f) return k.slice(named!.length + 1);
          return camel(f);
        };
        if (t.fields.length === 1 && !(isObj(v) && keyOf(t.fields[0]!.name) in v)) {
          return cmp(t.fields[0]!.type, x[t.fields[0]!.name], v, `${at}.${t.fields[0]!.name}`);
        }
        if (!isObj(v)) return bad('the table has no object here');
        const seen = new Set<string>();
        for (const f of t.fields) {
          const k = keyOf(f.name);
          seen.add(k);
          const ft = resolve(spec, f.type);
          if (ft.kind === 'union') {
            seen.add(ft.discName);
            const arm = ft.arms.find((a) => a.value === x[f.name][ft.discName]);
            if (ft.discName in v && ARM_TYPE[arm!.name] !== v[ft.discName]) {
              bad(`${f.name}: .x arm '${arm!.name}' but table type '${v[ft.discName]}'`);
            }
            cmp(arm!.type, x[f.name][arm!.name], v[k], `${at}.${f.name}.${arm!.name}`);
            continue;
          }
          if (!(k in v)) {
            // An optional the table leaves out when it is null (e.g. ReexecResult.error when ok).
            if (x[f.name] === null) continue;
            out.push(`${at}: .x field '${f.name}' (table key '${k}') missing in the table's value`);
            continue;
          }
          cmp(f.type, x[f.name], v[k], `${at}.${f.name}`);
        }
        for (const k of Object.keys(v)) if (!seen.has(k)) out.push(`${at}: table key '${k}' has no field in ${named ?? 'the .x struct'}`);
        return;
      }
      case 'optional':
        if (x === null) {
          if (v !== null && v !== undefined) bad('null in .x, set in the table');
          return;
        }
        if (v === null || v === undefined) return bad('set in .x, null in the table');
        return cmp(t.of, x, v, at);
      case 'array':
        if (!Array.isArray(v)) return bad('not an array in the table');
        if (v.length !== x.length) return bad(`length ${x.length} vs ${v.length}`);
        x.forEach((e: unknown, k: number) => cmp(t.of, e, v[k], `${at}[${k}]`));
        return;
      case 'opaque':
        if (typeof v === 'string' && t.fixed === 16) {
          if (uuidToString(x) !== v) bad('uuid differs');
          return;
        }
        if (!(v instanceof Uint8Array) || !Buffer.from(v).equals(x)) bad('bytes differ');
        return;
      case 'string':
        if (typeof v !== 'string' || v !== x) bad('string differs');
        return;
      case 'hyper':
      case 'uhyper':
        if ((typeof v !== 'bigint' && typeof v !== 'number') || BigInt(v) !== x) bad('hyper differs');
        return;
      case 'bool':
        if (v !== x) bad('bool differs');
        return;
      case 'int':
      case 'uint':
      case 'enum':
        if (typeof v === 'boolean') {
          if ((x !== 0) !== v) bad('int-as-boolean differs');
        } else if (v !== x) bad('number differs');
        return;
      case 'double':
        if (v !== x) bad('double differs');
        return;
      case 'void':
        if (v !== undefined) bad('void in .x');
        return;
      default:
        bad(`cannot compare ${t.kind}`);
    }
  };
  cmp(type, xv, tv, path);
  return out;
}

// ---- fixture files --------------------------------------------------------------------

/** Hex with `#` comment lines; whitespace ignored. */
export function parseHexFixture(text: string): Buffer {
  const hex = text
    .split('\n')
    .filter((l) => !l.trimStart().startsWith('#'))
    .join('')
    .replace(/\s+/g, '');
  if (!/^([0-9a-f]{2})*$/i.test(hex)) throw new Error('fixture is not hex');
  return Buffer.from(hex, 'hex');
}

export function formatHexFixture(comment: string[], bytes: Buffer): string {
  const words = bytes.toString('hex').match(/.{1,8}/g) ?? [];
  const lines: string[] = [];
  for (let k = 0; k < words.length; k += 8) lines.push(words.slice(k, k + 8).join(' '));
  return [...comment.map((c) => `# ${c}`), ...lines, ''].join('\n');
}
