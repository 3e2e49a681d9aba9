// Records real libvirt traffic into test/fixtures/wire/captured/ (run by
// hand: `npm run wire:capture`, as root; never by the tests). A recording
// proxy sits between the client and the REAL virtlockd (Debian 12's libvirt
// 9.0, started by test/lib/virtlockd.ts in a private mount namespace):
//
// - admin program: the REAL virt-admin (libvirt-clients) runs its commands
//   through the proxy, so calls and replies are both libvirt's bytes;
// - lock-space program: the calls come from relockd's own LockspaceClient
//   (libvirtd's lockd plugin cannot be driven without a libvirtd), the replies
//   and errors are virtlockd's — a void reply also says virtlockd's XDR
//   decoder accepted our call's bytes.
//
// Each distinct (program, procedure, type, status) is kept once, in the order
// seen. Keepalive packets are skipped. Review the diff after a run.

import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { FrameReader, MessageStatus, MessageType } from '../../src/rpc/packet.js';
import { LockspaceClient } from '../../src/protocol/lockspaceClient.js';
import { startVirtlockd, visibleTmpDir } from '../lib/virtlockd.js';
import { FIXTURES, formatHexFixture, wirePrograms } from '../lib/wirePrograms.js';

const run = promisify(execFile);
const KEEPALIVE = 0x6b656570;
const OUT = join(FIXTURES, 'captured');

interface Recorded {
  dir: 'call' | 'reply';
  packet: Buffer;
  context: string;
}
const recorded: Recorded[] = [];
let context = '';

/** A UNIX-socket proxy to `target` that records every packet both ways. */
function proxy(listenPath: string, target: string): Promise<net.Server> {
  const srv = net.createServer((c) => {
    const up = net.connect(target);
    const pipe = (from: net.Socket, to: net.Socket, dir: Recorded['dir']) => {
      const fr = new FrameReader();
      from.on('data', (d) => {
        to.write(d);
        fr.push(d);
        for (let p = fr.next(); p; p = fr.next()) {
          if (p.header.prog === KEEPALIVE) continue;
          const len = Buffer.alloc(4);
          len.writeUInt32BE(p.body.length + 4);
          recorded.push({ dir, packet: Buffer.concat([len, p.body]), context });
        }
      });
      from.on('close', () => to.destroy());
      from.on('error', () => to.destroy());
    };
    pipe(c, up, 'call');
    pipe(up, c, 'reply');
  });
  return new Promise((resolve) => srv.listen(listenPath, () => resolve(srv)));
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(visibleTmpDir(), 'wirecap-'));
  const vl = await startVirtlockd({ dir: join(dir, 'vl') });
  const adminProxy = join(dir, 'admin-proxy');
  const lockProxy = join(dir, 'lock-proxy');
  const servers = [await proxy(adminProxy, vl.adminSocketPath), await proxy(lockProxy, vl.socketPath)];
  const virtAdmin = async (...args: string[]) => {
    context = `virt-admin ${args.join(' ')}`;
    try {
      const r = await run('/usr/bin/virt-admin', ['-c', `virtlockd:///system?socket=${adminProxy}`, ...args], { timeout: 20000 });
      return r.stdout;
    } catch (e) {
      return String((e as { stdout?: string }).stdout ?? '');
    }
  };
  try {
    const { stdout: version } = await run('/usr/bin/virt-admin', ['--version']);
    // Lock-space program: our client's calls, virtlockd's replies.
    const lsDir = join(dir, 'lockspace');
    mkdirSync(lsDir);
    const image = join(dir, 'disk.img');
    writeFileSync(image, '');
    const a = await LockspaceClient.connect(lockProxy);
    const b = await LockspaceClient.connect(lockProxy);
    context = 'LockspaceClient (relockd) → virtlockd';
    const owner = (id: number, pid: number) => ({ uuid: 'c7a5fdbd-edaf-9455-926a-d65c16db1809', name: `guest-${id}`, id, pid });
    await a.register(owner(1, 4242));
    await a.createLockspace(lsDir);
    await a.createResource(lsDir, 'res1');
    await a.acquire(lsDir, 'res1', 0);
    await a.acquire('', image, 0);
    await b.register(owner(2, 4343));
    await b.acquire('', image, 0).catch(() => undefined); // error reply: the lock is held
    await a.release('', image, 0);
    await a.release(lsDir, 'res1', 0);
    await a.deleteResource(lsDir, 'res1');
    await a.newLockspace(lsDir).catch(() => undefined);
    await b.restrict();

    // Admin program: the real virt-admin both ways.
    await virtAdmin('version');
    await virtAdmin('srv-list');
    await virtAdmin('srv-threadpool-info', 'virtlockd');
    await virtAdmin('srv-threadpool-set', 'virtlockd', '--priority-workers', '3');
    const list = await virtAdmin('srv-clients-list', 'virtlockd');
    const id = /^\s*(\d+)\s/m.exec(list)?.[1];
    if (!id) throw new Error(`no client id in: ${list}`);
    await virtAdmin('client-info', 'virtlockd', id);
    await virtAdmin('srv-clients-info', 'virtlockd');
    await virtAdmin('srv-clients-set', 'virtlockd', '--max-clients', '100');
    await virtAdmin('daemon-log-outputs');
    await virtAdmin('daemon-log-filters');
    await virtAdmin('daemon-log-outputs', '3:stderr');
    await virtAdmin('daemon-log-filters', '1:locking');
    await virtAdmin('srv-update-tls', 'virtlockd');
    await virtAdmin('daemon-timeout', '--timeout', '0');
    await virtAdmin('srv-threadpool-info', 'nosuch');
    await virtAdmin('client-disconnect', 'virtlockd', id);
    a.close();
    b.close();

    // Write them out.
    rmSync(OUT, { recursive: true, force: true });
    mkdirSync(OUT, { recursive: true });
    const seen = new Set<string>();
    let n = 0;
    for (const r of recorded) {
      const prog = r.packet.readUInt32BE(4);
      const proc = r.packet.readInt32BE(12);
      const type = r.packet.readInt32BE(16);
      const status = r.packet.readInt32BE(24);
      const p = wirePrograms.find((x) => x.program.prog === prog);
      const name = p?.program.procedures.get(proc)?.name ?? `PROC${proc}`;
      const kind = type === MessageType.CALL ? 'call' : status === MessageStatus.ERROR ? 'error' : 'reply';
      const key = `${prog}/${proc}/${kind}`;
      if (seen.has(key)) continue;
      seen.add(key);
      const file = `${String(++n).padStart(2, '0')}-${p?.key ?? prog.toString(16)}-${name}.${kind}.hex`;
      const from = r.dir === 'call' ? (r.context.startsWith('virt-admin') ? 'virt-admin' : "relockd's LockspaceClient") : 'virtlockd';
      writeFileSync(
        join(OUT, file),
        formatHexFixture(
          [
            `${p?.key ?? '?'} ${name} ${kind}, written by ${from} (recorded by test/wire/capture.ts, \`npm run wire:capture\`)`,
            `during: ${r.context}`,
            `libvirt: ${version.trim()} (Debian 12 libvirt-clients / libvirt-daemon 9.0.0-4+deb12u2)`,
          ],
          r.packet,
        ),
      );
    }
    console.log(`${n} packets written to ${OUT}:\n${readdirSync(OUT).join('\n')}`);
  } finally {
    for (const s of servers) s.close();
    await vl.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
