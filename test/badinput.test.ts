// Bad input never affects other clients' locks or the daemon: thousands of
// random and mutated frames over many connections, while a separate process
// checks that an unrelated lease stays held throughout.

import t from 'tap';
import { writeFileSync, mkdtempSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { startRelockd } from './lib/relockd.js';
import { probeOne } from './lib/probe.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';
import { LOCKSPACE_PROGRAM, Proc, codec } from '../src/protocol/lockspace.js';
import { encodePacket } from '../src/rpc/packet.js';
import { XdrWriter } from '../src/rpc/xdr.js';

/** Deterministic PRNG so a failure can be reproduced from its seed. */
function rng(seed: number) {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 0x100000000;
  };
}

function validCall(r: () => number, path: string): Buffer {
  const w = new XdrWriter();
  const proc = 1 + Math.floor(r() * 8);
  switch (proc) {
    case Proc.REGISTER:
      codec.register.encode(w, { owner: { uuid: '00112233-4455-6677-8899-aabbccddeeff', name: 'fuzz', id: 1, pid: 424242 }, flags: 0 });
      break;
    case Proc.RESTRICT:
      codec.flags.encode(w, { flags: 0 });
      break;
    case Proc.NEW:
    case Proc.CREATE_LOCKSPACE:
      w.string(join(path, `ls${Math.floor(r() * 3)}`)).u32(0);
      break;
    default:
      codec.resource.encode(w, { path: '', name: join(path, `f${Math.floor(r() * 3)}`), flags: Math.floor(r() * 4) });
  }
  return encodePacket({ prog: LOCKSPACE_PROGRAM, vers: 1, proc, type: 0, serial: Math.floor(r() * 100), status: 0 }, Buffer.from(w.bytes()));
}

/** Random garbage, or a valid call with a few bytes flipped, cut or extended. */
function badFrame(r: () => number, path: string): Buffer {
  const kind = Math.floor(r() * 5);
  if (kind === 0) return randomBytes(1 + Math.floor(r() * 64));
  const b = Buffer.from(validCall(r, path));
  if (kind === 1) {
    for (let i = 0; i < 1 + r() * 4; i++) b[4 + Math.floor(r() * (b.length - 4))] = Math.floor(r() * 256);
    return b;
  }
  if (kind === 2) return b.subarray(0, Math.floor(r() * b.length));
  if (kind === 3) {
    // length word claims more or less than is sent
    b.writeUInt32BE(Math.max(0, b.length + Math.floor((r() - 0.5) * 40)), 0);
    return b;
  }
  for (let i = 0; i < 3; i++) b[4 + Math.floor(r() * 24)] = Math.floor(r() * 256); // header fields
  return b;
}

t.test('random frames leave the daemon serving and other leases held', async (t) => {
  const d = await startRelockd({ logLevel: 'warn' });
  t.teardown(() => d.stop());
  const work = mkdtempSync(join(tmpdir(), 'fuzz-'));
  t.teardown(() => rmSync(work, { recursive: true, force: true }));
  const img = join(work, 'precious.raw');
  writeFileSync(img, '');
  for (let i = 0; i < 3; i++) writeFileSync(join(work, `f${i}`), '');
  const holder = await LockspaceClient.connect(d.socketPath);
  t.teardown(() => holder.close());
  await holder.register({ uuid: '00112233-4455-6677-8899-aabbccddeeff', name: 'holder', id: 1, pid: 31337 });
  await holder.acquire('', img, 0);

  const seed = Number(process.env.FUZZ_SEED ?? Date.now() % 100000);
  t.comment(`seed ${seed} (FUZZ_SEED=${seed} reproduces)`);
  const r = rng(seed);
  const FRAMES = 4000;
  const CONNS = 40;
  let sent = 0;
  const perConn = FRAMES / CONNS;
  let connections = 0;
  const connect = async () => {
    const s = net.connect(d.socketPath);
    s.on('error', () => {});
    s.on('data', () => {});
    await new Promise((res) => s.once('connect', res));
    connections++;
    return s;
  };
  // Each worker sends its share, reconnecting whenever the daemon hangs up
  // on it (bad length words close the connection, as they should).
  await Promise.all(
    Array.from({ length: CONNS }, async () => {
      let s = await connect();
      for (let i = 0; i < perConn; i++) {
        if (s.destroyed) s = await connect();
        s.write(r() < 0.3 ? validCall(r, work) : badFrame(r, work));
        sent++;
        await new Promise((res) => setImmediate(res));
      }
      await new Promise((res) => setTimeout(res, 50));
      s.destroy();
    }),
  );
  t.comment(`${sent} frames over ${connections} connections`);
  t.equal(sent, FRAMES, 'every frame was sent');
  t.equal(probeOne(img), 'held', 'the unrelated lease is still held');
  await holder.ping();
  const fresh = await LockspaceClient.connect(d.socketPath);
  t.teardown(() => fresh.close());
  await fresh.register({ uuid: '00112233-4455-6677-8899-aabbccddeeff', name: 'after', id: 1, pid: 4444 });
  await fresh.createLockspace(join(work, 'after'));
  t.pass('new clients are served');
  await holder.release('', img, 0);
  t.equal(probeOne(img), 'free');
  t.equal(d.child.exitCode, null, 'daemon alive');
  t.notMatch(d.logs(), /uncaught|unhandled/, 'no uncaught errors logged');
});

t.test('a client that never reads its replies cannot make the daemon buffer without bound', async (t) => {
  const d = await startRelockd({ logLevel: 'warn' });
  t.teardown(() => d.stop());
  const s = net.connect(d.socketPath);
  s.on('error', () => {});
  await new Promise((res) => s.once('connect', res));
  s.pause(); // never read
  const ping = encodePacket({ prog: 0x6b656570, vers: 1, proc: 1, type: 2, serial: 0, status: 0 });
  const burst = Buffer.concat(Array.from({ length: 4096 }, () => ping));
  let written = 0;
  const deadline = Date.now() + 3000;
  while (Date.now() < deadline) {
    if (!s.write(burst)) await new Promise((res) => setTimeout(res, 20));
    written += burst.length;
    if (s.writableLength > 8 << 20) break;
  }
  const rss = () => {
    const status = readFileSync(`/proc/${d.pid}/status`, 'utf8');
    return Number(/VmRSS:\s+(\d+)/.exec(status)![1]) * 1024;
  };
  const before = rss();
  await new Promise((res) => setTimeout(res, 500));
  t.comment(`client queued ${(written / 1e6).toFixed(1)} MB of PINGs without reading; daemon RSS ${(before / 1e6).toFixed(1)} MB`);
  t.ok(s.writableLength > 0, 'the client is blocked: the daemon stopped reading');
  t.ok(before < 200e6, 'daemon memory stays bounded');
  const other = await LockspaceClient.connect(d.socketPath);
  await other.ping();
  other.close();
  t.pass('other clients are still served');
  s.destroy();
});
