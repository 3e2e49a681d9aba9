// One protocol suite, run against relockd and against the real virtlockd:
// the same calls must give the same replies (codes, domains, texts) and the
// same locks, as seen from another process.

import t from 'tap';
import type { Test } from 'tap';
import { mkdirSync, writeFileSync, existsSync, statSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { targets, spawnOwner } from './lib/targets.js';
import { probeOne } from './lib/probe.js';
import { waitExit } from './lib/relockd.js';
import type { StartedDaemon } from './lib/relockd.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';
import { RpcClient, RemoteError } from '../src/rpc/client.js';
import { LOCKSPACE_PROGRAM, Proc, codec } from '../src/protocol/lockspace.js';
import { encodePacket, MessageType } from '../src/rpc/packet.js';
import { XdrWriter } from '../src/rpc/xdr.js';

const UUID = '00112233-4455-6677-8899-aabbccddeeff';
let ownerSeq = 1000;
const owner = (pid = ++ownerSeq) => ({ uuid: UUID, name: `vm${pid}`, id: 1, pid });

interface Expect {
  code: number;
  domain: number;
  message: string;
  str1?: string | null;
  str2?: string | null;
  int1?: number;
  int2?: number;
}

async function expectError(t: Test, p: Promise<unknown>, e: Expect, what: string) {
  try {
    await p;
    t.fail(`${what}: expected an error`);
  } catch (err) {
    if (!(err instanceof RemoteError)) throw err;
    const w = err.wire;
    const got: Record<string, unknown> = { code: w.code, domain: w.domain, message: w.message };
    const want: Record<string, unknown> = { code: e.code, domain: e.domain, message: e.message };
    for (const k of ['str1', 'str2', 'int1', 'int2'] as const) {
      if (e[k] !== undefined) {
        got[k] = w[k];
        want[k] = e[k];
      }
    }
    t.same(got, want, what);
    t.equal(w.level, 2, `${what}: level`);
  }
}

const rpcErr = (message: string): Expect => ({ code: 39, domain: 7, message, str1: '%s', str2: message, int1: -1, int2: -1 });

for (const target of targets) {
  t.test(target.name, { skip: target.available ? false : target.why }, async (t) => {
    const d: StartedDaemon = await target.start();
    const work = mkdtempSync(join(tmpdir(), `proto-${target.name}-`));
    t.teardown(async () => {
      await d.stop();
      rmSync(work, { recursive: true, force: true });
    });
    const clients: LockspaceClient[] = [];
    t.teardown(() => clients.forEach((c) => c.close()));
    const connect = async () => {
      const c = await LockspaceClient.connect(d.socketPath);
      clients.push(c);
      return c;
    };
    let fileSeq = 0;
    const newFile = () => {
      const p = join(work, `img-${++fileSeq}.raw`);
      writeFileSync(p, '');
      return p;
    };

    t.test('keepalive PING is answered with PONG', async (t) => {
      const c = await connect();
      await c.ping();
      await c.ping();
      t.pass('two PONGs');
    });

    t.test('REGISTER, RESTRICT and the pre-check order', async (t) => {
      const c = await connect();
      await expectError(t, c.acquire('', '/x', 0), { code: 55, domain: 7, message: 'Requested operation is not valid: lock owner details have not been registered', str1: 'Requested operation is not valid: %s', str2: 'lock owner details have not been registered', int1: -1, int2: -1 }, 'unregistered ACQUIRE');
      await expectError(t, c.register({ ...owner(), id: 0 }), { code: 55, domain: 7, message: 'Requested operation is not valid: lock owner details have not been registered' }, 'REGISTER with id 0');
      await expectError(t, c.register(owner(), 1), { code: 8, domain: 7, message: 'unsupported flags (0x1) in function virLockSpaceProtocolDispatchRegister', str1: 'virLockSpaceProtocolDispatchRegister', str2: 'flags', int1: 0, int2: 0 }, 'REGISTER flags');
      await c.register(owner());
      await c.register(owner()); // re-registering is allowed in 9.0
      await expectError(t, c.acquire('', '/x', 4), { code: 8, domain: 7, message: 'unsupported flags (0x4) in function virLockSpaceProtocolDispatchAcquireResource' }, 'ACQUIRE flags 4');
      await expectError(t, c.acquire('', '/x', 7), { code: 8, domain: 7, message: 'unsupported flags (0x4) in function virLockSpaceProtocolDispatchAcquireResource' }, 'ACQUIRE flags 7 reports only bad bits');
      await expectError(t, c.release('', '/x', 1), { code: 8, domain: 7, message: 'unsupported flags (0x1) in function virLockSpaceProtocolDispatchReleaseResource' }, 'RELEASE flags');
      await expectError(t, c.restrict(2), { code: 8, domain: 7, message: 'unsupported flags (0x2) in function virLockSpaceProtocolDispatchRestrict' }, 'RESTRICT flags');
      await c.restrict();
      const restricted = { code: 29, domain: 7, message: 'operation forbidden: lock manager connection has been restricted', str1: 'operation forbidden: %s', str2: 'lock manager connection has been restricted', int1: -1, int2: -1 };
      await expectError(t, c.register(owner()), restricted, 'REGISTER when restricted');
      await expectError(t, c.restrict(), restricted, 'RESTRICT when restricted');
      await expectError(t, c.createLockspace(work), restricted, 'CREATE_LOCKSPACE when restricted');
      await expectError(t, c.acquire('', '/x', 0), restricted, 'ACQUIRE when restricted');
      await expectError(t, c.acquire('', '/x', 8), { code: 8, domain: 7, message: 'unsupported flags (0x8) in function virLockSpaceProtocolDispatchAcquireResource' }, 'flags are checked before the restriction');
      await c.ping();
      t.pass('restricted connections still get PONGs');
    });

    t.test('RESTRICT on an unregistered connection is refused', async (t) => {
      const c = await connect();
      await expectError(t, c.restrict(), { code: 55, domain: 7, message: 'Requested operation is not valid: lock owner details have not been registered' }, 'RESTRICT unregistered');
    });

    t.test('exclusive lease in the default lock space', async (t) => {
      const img = newFile();
      const a = await connect();
      const b = await connect();
      const oa = owner();
      await a.register(oa);
      await b.register(owner());
      t.equal(probeOne(img), 'free');
      await a.acquire('', img, 0);
      t.equal(probeOne(img), 'held', 'another process cannot take a write lock');
      t.equal(probeOne(img, 'read'), 'held', 'nor a read lock');
      const busy = { code: 87, domain: 51, message: `resource busy: Lockspace resource '${img}' is locked`, str1: 'resource busy: %s', str2: `Lockspace resource '${img}' is locked`, int1: -1, int2: -1 };
      await expectError(t, b.acquire('', img, 0), busy, 'second owner');
      await expectError(t, b.acquire('', img, 1), busy, 'second owner, shared');
      await expectError(t, a.acquire('', img, 0), busy, 'same owner again');
      await expectError(t, b.release('', img, 0), { code: 1, domain: 51, message: `internal error: owner ${ownerSeq} does not hold the resource lock` }, 'release by a non-owner');
      await a.release('', img, 0);
      t.equal(probeOne(img), 'free', 'released');
      t.ok(existsSync(img), 'the image itself is never unlinked');
      await expectError(t, a.release('', img, 0), { code: 87, domain: 51, message: `resource busy: Lockspace resource '${img}' is not locked` }, 'release when not locked');
    });

    t.test('shared leases: a read lock with an owner list', async (t) => {
      const img = newFile();
      const a = await connect();
      const b = await connect();
      await a.register(owner());
      await b.register(owner());
      await a.acquire('', img, 1);
      await b.acquire('', img, 1);
      await a.acquire('', img, 1);
      t.equal(probeOne(img, 'read'), 'free', 'other readers may share');
      t.equal(probeOne(img, 'write'), 'held', 'writers are excluded');
      await expectError(t, b.acquire('', img, 0), { code: 87, domain: 51, message: `resource busy: Lockspace resource '${img}' is locked` }, 'exclusive on shared');
      await a.release('', img, 0);
      await a.release('', img, 0);
      t.equal(probeOne(img), 'held', 'b still shares it');
      await b.release('', img, 0);
      t.equal(probeOne(img), 'free');
    });

    t.test('a lock held by another process is reported busy', async (t) => {
      const img = newFile();
      const held = spawnHolder(img);
      await held.ready;
      const c = await connect();
      await c.register(owner());
      await expectError(t, c.acquire('', img, 0), { code: 87, domain: 51, message: `resource busy: Lockspace resource '${img}' is locked` }, 'foreign lock');
      held.child.kill('SIGKILL');
      await waitExit(held.child, 5000);
      await c.acquire('', img, 0);
      await c.release('', img, 0);
    });

    t.test('open failures are system errors naming the path', async (t) => {
      const c = await connect();
      await c.register(owner());
      const missing = join(work, 'missing.raw');
      await expectError(t, c.acquire('', missing, 0), { code: 38, domain: 51, message: `Unable to open resource ${missing}: No such file or directory`, str1: '%s', str2: `Unable to open resource ${missing}: No such file or directory`, int1: 2, int2: -1 }, 'missing image');
      const dir = join(work, 'adir');
      mkdirSync(dir);
      await expectError(t, c.acquire('', dir, 0), { code: 38, domain: 51, message: `Unable to open resource ${dir}: Is a directory`, int1: 21 }, 'a directory');
      await expectError(t, c.acquire('', join(work, 'nodir', 'x'), 2), { code: 38, domain: 51, message: `Unable to open/create resource ${join(work, 'nodir', 'x')}: No such file or directory`, int1: 2 }, 'autocreate in a missing directory');
    });

    t.test('directory lock spaces: CREATE_LOCKSPACE, NEW, autocreate', async (t) => {
      const c = await connect();
      const space = join(work, 'lockd', 'files');
      await expectError(t, c.acquire(space, 'abc', 2), { code: 55, domain: 7, message: 'Requested operation is not valid: lock owner details have not been registered' }, 'unregistered');
      await c.createLockspace(space); // allowed unregistered, mkdir -p
      t.ok(statSync(space).isDirectory());
      t.equal(statSync(space).mode & 0o777, 0o700, 'created 0700');
      await c.createLockspace(space);
      await c.createLockspace('');
      await c.register(owner());
      await expectError(t, c.acquire(`${space}/`, 'abc', 2), { code: 1, domain: 7, message: `internal error: Lockspace for path ${space}/ does not exist` }, 'paths are exact strings');
      await expectError(t, c.newLockspace(''), { code: 55, domain: 7, message: 'Requested operation is not valid: the default lockspace already exists' }, 'NEW default');
      await expectError(t, c.newLockspace(space), { code: 1, domain: 7, message: `internal error: Lockspace for path ${space} already exists` }, 'NEW existing');
      await expectError(t, c.newLockspace(space, 1), { code: 8, domain: 7, message: 'unsupported flags (0x1) in function virLockSpaceProtocolDispatchNew' }, 'NEW flags');
      const other = join(work, 'newspace');
      await c.newLockspace(other);
      t.ok(statSync(other).isDirectory());
      const afile = newFile();
      await expectError(t, c.createLockspace(afile), { code: 1, domain: 51, message: `internal error: Lockspace location ${afile} exists, but is not a directory` }, 'a file is not a lock space');

      const name = 'f2f4417b8fe812d19e40421ca4d46765c702e950c54a3a74e967e48dc9812492';
      const lease = join(space, name);
      await c.acquire(space, name, 2);
      t.ok(existsSync(lease), 'lease file created');
      t.equal(statSync(lease).mode & 0o777, 0o600, 'mode 0600');
      t.equal(probeOne(lease), 'held');
      await c.release(space, name, 0);
      t.notOk(existsSync(lease), 'autocreated lease file removed on release');

      await expectError(t, c.acquire(space, 'plain', 0), { code: 38, domain: 51, message: `Unable to open resource ${space}/plain: No such file or directory` }, 'no autocreate');
      await expectError(t, c.acquire(join(work, 'nope'), 'x', 2), { code: 1, domain: 7, message: `internal error: Lockspace for path ${join(work, 'nope')} does not exist` }, 'unknown lock space');
    });

    t.test('paths and names are bytes: non-UTF-8 names reach the filesystem exactly', async (t) => {
      // libvirt sends C strings; Linux names are bytes. \xe9 alone and \xff are not UTF-8.
      const bytes = (...parts: Array<string | number[]>) => Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p) : Buffer.from(p))));
      const space = bytes(join(work, 'lease-space-'), [0xe9]);
      const c = await connect();
      await c.createLockspace(space);
      const listing = readdirSync(work, { encoding: 'buffer' }).map((b) => b.toString('hex'));
      t.ok(listing.includes(bytes('lease-space-', [0xe9]).toString('hex')), 'CREATE_LOCKSPACE made the directory with exactly the bytes sent');
      t.notOk(existsSync(join(work, 'lease-space-\uFFFD')), 'and no directory with a replacement character');
      await c.register(owner());
      const lease = bytes('lease-', [0xfe]);
      await c.acquire(space, lease, 2);
      const leaseFile = Buffer.concat([space, Buffer.from('/'), lease]);
      t.equal(probeOne(leaseFile), 'held', 'the autocreated lease file with the exact name is locked (probed from another process)');
      const img = bytes(join(work, 'disk-'), [0xff], '.raw');
      writeFileSync(img, '');
      await c.acquire('', img, 0);
      t.equal(probeOne(img), 'held', 'ACQUIRE of disk-\\xff.raw locks exactly that file');
      const utf8 = join(work, 'disk-é.raw');
      writeFileSync(utf8, '');
      await c.acquire('', utf8, 0);
      t.equal(probeOne(utf8), 'held', 'a UTF-8 name is the same bytes as before');
      t.equal(probeOne(bytes(join(work, 'disk-'), [0xe9], '.raw')), 'error:No such file or directory', 'and not its latin1 look-alike');
      const b = await connect();
      await b.register(owner());
      await expectError(t, b.acquire('', img, 0), { code: 87, domain: 51, message: `resource busy: Lockspace resource '${img.toString('utf8')}' is locked` }, 'busy, naming the resource');
      await c.release('', img, 0);
      await c.release('', utf8, 0);
      await c.release(space, lease, 0);
      t.equal(probeOne(img), 'free', 'released');
      t.notOk(readdirSync(space).length, 'the autocreated lease file is removed on release (host-local storage)');
    });

    t.test('shared autocreated lease files are removed only by the last sharer', async (t) => {
      const space = join(work, 'shared-space');
      const a = await connect();
      const b = await connect();
      await a.createLockspace(space);
      await a.register(owner());
      await b.register(owner());
      await a.acquire(space, 'disk', 3);
      await b.acquire(space, 'disk', 3);
      await a.release(space, 'disk', 0);
      t.ok(existsSync(join(space, 'disk')));
      t.equal(probeOne(join(space, 'disk')), 'held');
      await b.release(space, 'disk', 0);
      t.notOk(existsSync(join(space, 'disk')));
    });

    t.test('CREATE_RESOURCE and DELETE_RESOURCE', async (t) => {
      const space = join(work, 'cr-space');
      const c = await connect();
      await c.createLockspace(space);
      await c.register(owner());
      await c.createResource(space, 'res');
      t.ok(existsSync(join(space, 'res')));
      await c.acquire(space, 'res', 0);
      const busy = { code: 87, domain: 51, message: "resource busy: Lockspace resource 'res' is locked" };
      await expectError(t, c.createResource(space, 'res'), busy, 'create while held');
      await expectError(t, c.deleteResource(space, 'res'), busy, 'delete while held');
      await expectError(t, c.deleteResource(space, 'res', 1), { code: 8, domain: 7, message: 'unsupported flags (0x1) in function virLockSpaceProtocolDispatchDeleteResource' }, 'delete flags');
      await expectError(t, c.createResource(space, 'res', 1), { code: 8, domain: 7, message: 'unsupported flags (0x1) in function virLockSpaceProtocolDispatchCreateResource' }, 'create flags');
      await c.release(space, 'res', 0);
      t.ok(existsSync(join(space, 'res')), 'not autocreated: kept');
      await c.deleteResource(space, 'res');
      t.notOk(existsSync(join(space, 'res')));
      await c.deleteResource(space, 'res');
      t.pass('deleting a missing resource succeeds');
      await expectError(t, c.createResource(join(work, 'nope2'), 'x'), { code: 1, domain: 7, message: `internal error: Lockspace for path ${join(work, 'nope2')} does not exist` }, 'unknown space');
    });

    t.test('generic dispatch errors echo the header', async (t) => {
      const rpc = await RpcClient.connect(d.socketPath);
      t.teardown(() => rpc.close());
      const checkErr = async (p: Promise<import('../src/rpc/packet.js').Packet>, msg: string, hdr: { prog: number; vers: number; proc: number }) => {
        const pkt = await p;
        t.equal(pkt.header.status, 1, `${msg}: error status`);
        t.equal(pkt.header.type, MessageType.REPLY);
        t.same({ prog: pkt.header.prog, vers: pkt.header.vers, proc: pkt.header.proc }, hdr, `${msg}: header echoed`);
        await expectError(t, Promise.resolve().then(() => { throw new RemoteError(decodeErr(pkt), pkt.header); }), rpcErr(msg), msg);
      };
      await checkErr(rpc.callRaw(0x12345, 1, 1), 'Cannot find program 74565 version 1', { prog: 0x12345, vers: 1, proc: 1 });
      await checkErr(rpc.callRaw(LOCKSPACE_PROGRAM, 2, 1), 'Cannot find program 245874415 version 2', { prog: LOCKSPACE_PROGRAM, vers: 2, proc: 1 });
      await checkErr(rpc.callRaw(0xf0000000, 1, 1), 'Cannot find program -268435456 version 1', { prog: 0xf0000000, vers: 1, proc: 1 });
      await checkErr(rpc.callRaw(0x6b656570, 1, 1), 'Cannot find program 1801807216 version 1', { prog: 0x6b656570, vers: 1, proc: 1 });
      for (const proc of [0, 9, -1, 1000]) await checkErr(rpc.callRaw(LOCKSPACE_PROGRAM, 1, proc), `unknown procedure: ${proc}`, { prog: LOCKSPACE_PROGRAM, vers: 1, proc });
      await checkErr(rpc.callRaw(LOCKSPACE_PROGRAM, 1, 1, undefined, { status: 1 }), 'Unexpected message status 1', { prog: LOCKSPACE_PROGRAM, vers: 1, proc: 1 });
      await checkErr(rpc.callRaw(LOCKSPACE_PROGRAM, 1, Proc.REGISTER, Buffer.alloc(10)), 'Unable to decode message payload', { prog: LOCKSPACE_PROGRAM, vers: 1, proc: 1 });
      const long = new XdrWriter().string('x'.repeat(65537)).u32(0);
      await checkErr(rpc.callRaw(LOCKSPACE_PROGRAM, 1, Proc.CREATE_LOCKSPACE, Buffer.from(long.bytes())), 'Unable to decode message payload', { prog: LOCKSPACE_PROGRAM, vers: 1, proc: 8 });
      // trailing bytes after valid args are ignored
      const ok = new XdrWriter().string('').u32(0xdeadbeef);
      const r = await rpc.callRaw(LOCKSPACE_PROGRAM, 1, Proc.CREATE_LOCKSPACE, Buffer.from(ok.bytes()));
      t.equal(r.header.status, 0, 'trailing bytes ignored');
      t.equal(r.body.length, 24, 'a success reply is exactly 28 bytes');
      // non-CALL messages are dropped silently; a PING afterwards proves nothing else came back
      rpc.writeRaw(encodePacket({ prog: 0x12345, vers: 1, proc: 1, type: MessageType.REPLY, serial: 99, status: 0 }));
      rpc.writeRaw(encodePacket({ prog: LOCKSPACE_PROGRAM, vers: 1, proc: 1, type: MessageType.MESSAGE, serial: 98, status: 0 }));
      rpc.writeRaw(encodePacket({ prog: LOCKSPACE_PROGRAM, vers: 1, proc: 1, type: MessageType.STREAM, serial: 97, status: 0 }));
      await rpc.ping();
      t.equal(rpc.unmatched.length, 0, 'no reply to non-CALL messages');
      // CALL_WITH_FDS with zero fds is dispatched normally
      const withFds = Buffer.concat([Buffer.from([0, 0, 0, 0]), Buffer.from(new XdrWriter().string('').bytes())]);
      const r2 = await rpc.callRaw(LOCKSPACE_PROGRAM, 1, Proc.CREATE_LOCKSPACE, withFds, { type: MessageType.CALL_WITH_FDS });
      t.equal(r2.header.status, 0, 'CALL_WITH_FDS accepted');
      t.equal(r2.header.type, MessageType.REPLY, 'plain REPLY to CALL_WITH_FDS');
    });

    t.test('CALL_WITH_FDS: passed fds are closed, the call is answered with a plain REPLY', async (t) => {
      // python3 can send SCM_RIGHTS (Node cannot): libvirt's layout is the packet
      // with nfds after the header, then one sendmsg per fd carrying one dummy byte.
      const marker = join(work, 'passed-fd-marker');
      writeFileSync(marker, '');
      const py = `
import socket, struct, sys, os, array
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
path = b''
body = struct.pack('>I', 2) + struct.pack('>I', len(path)) + path   # nfds=2, CREATE_LOCKSPACE("")
hdr = struct.pack('>IIiiIi', 0x0EA7BEEF, 1, 8, 4, 7, 0)
pkt = struct.pack('>I', 4 + len(hdr) + len(body)) + hdr + body
s.sendall(pkt)
fds = [os.open(sys.argv[2], os.O_RDONLY), os.open(sys.argv[2], os.O_RDONLY)]
for fd in fds:
    s.sendmsg([b'\\0'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [fd]))])
    os.close(fd)
# a PING after the dummy bytes must be read as the next packet
s.sendall(bytes.fromhex('0000001c6b6565700000000100000001000000020000000000000000'))
got = b''
while len(got) < 56:
    chunk = s.recv(4096)
    if not chunk: break
    got += chunk
reply = struct.unpack('>IIIiiIi', got[:28])
pong = struct.unpack('>IIIiiIi', got[28:56])
print(reply[4], reply[5], reply[6], pong[3])
`;
      const { execFileSync } = await import('node:child_process');
      const out = execFileSync('python3', ['-c', py, d.socketPath, marker], { encoding: 'utf8' }).trim().split(' ').map(Number);
      t.same(out, [1, 7, 0, 2], 'REPLY (type 1) to serial 7, status OK, then the PONG');
      const { readdirSync, readlinkSync } = await import('node:fs');
      let held = 0;
      for (const fd of readdirSync(`/proc/${d.pid}/fd`)) {
        try {
          if (readlinkSync(`/proc/${d.pid}/fd/${fd}`) === marker) held++;
        } catch {
          /* gone */
        }
      }
      t.equal(held, 0, 'the daemon holds none of the passed fds');
    });

    if (target.name === 'relockd') {
      t.test('relockd only: bad names and failed NEW are errors (virtlockd: escapes, replies success)', async (t) => {
        const c = await connect();
        await c.register(owner());
        const space = join(work, 'escape-space');
        await c.createLockspace(space);
        for (const bad of ['../escape', 'a/b', '..', '.']) {
          await expectError(t, c.acquire(space, bad, 2), { code: 8, domain: 51, message: `invalid argument: Lockspace resource name '${bad}' is not valid in lockspace ${space}: it must be a single path component (no '/', not '.' or '..')` }, `name '${bad}'`);
        }
        t.notOk(existsSync(join(work, 'escape')), 'nothing created outside the lock space');
        await expectError(t, c.acquire('', 'relative/image.raw', 0), { code: 8, domain: 51, message: "invalid argument: Lockspace resource 'relative/image.raw' is not an absolute path" }, 'relative path in the default lock space');
        const afile = newFile();
        await expectError(t, c.newLockspace(afile), { code: 1, domain: 51, message: `internal error: Lockspace location ${afile} exists, but is not a directory` }, 'NEW on a file reports the failure');
        await expectError(t, c.acquire(afile, 'x', 2), { code: 1, domain: 7, message: `internal error: Lockspace for path ${afile} does not exist` }, 'and no lock space was recorded');
      });
    }

    t.test('pipelined requests are answered in order, each once', async (t) => {
      const rpc = await RpcClient.connect(d.socketPath);
      t.teardown(() => rpc.close());
      const img = newFile();
      const w = (f: (w: XdrWriter) => void) => { const x = new XdrWriter(); f(x); return Buffer.from(x.bytes()); };
      const calls = [
        rpc.callRaw(LOCKSPACE_PROGRAM, 1, Proc.REGISTER, w((x) => codec.register.encode(x, { owner: owner(), flags: 0 }))),
        rpc.callRaw(LOCKSPACE_PROGRAM, 1, Proc.ACQUIRE_RESOURCE, w((x) => codec.resource.encode(x, { path: '', name: img, flags: 0 }))),
        rpc.callRaw(LOCKSPACE_PROGRAM, 1, Proc.ACQUIRE_RESOURCE, w((x) => codec.resource.encode(x, { path: '', name: img, flags: 0 }))),
        rpc.callRaw(LOCKSPACE_PROGRAM, 1, Proc.RELEASE_RESOURCE, w((x) => codec.resource.encode(x, { path: '', name: img, flags: 0 }))),
      ];
      const replies = await Promise.all(calls);
      t.same(replies.map((r) => r.header.serial), [0, 1, 2, 3]);
      t.same(replies.map((r) => r.header.status), [0, 0, 1, 0], 'the second acquire is refused, the rest succeed');
      await rpc.ping();
      t.equal(rpc.unmatched.length, 0, 'no duplicate replies');
    });

    t.test('bad length words close only that connection', async (t) => {
      const img = newFile();
      const holder = await connect();
      await holder.register(owner());
      await holder.acquire('', img, 0);
      for (const len of [0, 4, 27, 33554437, 0xffffffff]) {
        const rpc = await RpcClient.connect(d.socketPath);
        const b = Buffer.alloc(28);
        b.writeUInt32BE(len >>> 0, 0);
        rpc.writeRaw(b);
        await rpc.waitClosed();
        t.pass(`length ${len}: closed`);
      }
      t.equal(probeOne(img), 'held', 'other clients keep their leases');
      await holder.ping();
      await holder.release('', img, 0);
    });

    t.test('an owner connection closing releases its leases; others do not', async (t) => {
      const img1 = newFile();
      const img2 = newFile();
      const space = join(work, 'owner-space');
      const setup = await connect();
      await setup.createLockspace(space);
      const o = spawnOwner(d.socketPath, [{ path: '', name: img1, flags: 0 }, { path: space, name: 'lease', flags: 2 }]);
      await o.ready;
      t.equal(probeOne(img1), 'held');
      t.equal(probeOne(join(space, 'lease')), 'held');
      // A libvirtd-style connection (peer != owner) acquiring for the same owner pid:
      const lv = await connect();
      await lv.register({ uuid: UUID, name: 'ownervm', id: 7, pid: o.child.pid! });
      await lv.acquire('', img2, 0);
      lv.close();
      await new Promise((r) => setTimeout(r, 200));
      t.equal(probeOne(img2), 'held', 'closing a non-owner connection releases nothing');
      const killedAt = Date.now();
      o.child.kill('SIGKILL');
      t.ok(await waitFor(() => probeOne(img1) === 'free' && probeOne(img2) === 'free'), 'kill -9 of the owner releases every lease of its pid');
      t.comment(`${target.name}: leases free ${Date.now() - killedAt} ms after kill -9`);
      t.ok(await waitFor(() => !existsSync(join(space, 'lease'))), 'autocreated lease file removed');
    });
  });
}

import { decodeWireError } from '../src/rpc/wireError.js';
import { XdrReader } from '../src/rpc/xdr.js';
import { HEADER_SIZE } from '../src/rpc/packet.js';
import { spawn } from 'node:child_process';
import { waitFor } from './lib/wait.js';
function decodeErr(p: import('../src/rpc/packet.js').Packet) {
  return decodeWireError(new XdrReader(p.body, HEADER_SIZE));
}

/** A separate process holding a classic write lock on byte 0 (another host's daemon). */
function spawnHolder(path: string) {
  const child = spawn('python3', ['-c', `import fcntl,os,sys,time\nfd=os.open(sys.argv[1],os.O_RDWR)\nfcntl.lockf(fd,fcntl.LOCK_EX|fcntl.LOCK_NB,1,0)\nprint('ready',flush=True)\ntime.sleep(3600)`, path], { stdio: ['ignore', 'pipe', 'inherit'] });
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (c) => reject(new Error(`holder exited ${c}`)));
  });
  return { child, ready };
}
