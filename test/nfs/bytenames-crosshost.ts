// Cross-host, names that are not UTF-8: relockd on c1 and the real virtlockd
// (or relockd) on c2, sharing an NFS export (NFSv4.2 and NFSv3), create and
// lock exactly the same byte-named files, so they exclude each other: a lock
// space `lease-space-\xe9` with the autocreated lease `lease-\xfe`, and a
// disk image `disk-\xff.raw` in the default lock space. The server's own
// view (srv's ext4) must show exactly those bytes, and no U+FFFD look-alike.
// Uses the UML lab like crosshost.ts (docs/nfs-crosshost.md), but only the
// lab's `exec`; the lock clients are test/nfs/bytenames-client.mjs.
//
//   node --import=@tapjs/typescript/import test/nfs/bytenames-crosshost.ts [--lab=WORKDIR | --lab-dir=DIR]
//        [--time-limit=S] [--lab-script=PATH]
//
// --lab reuses a running lab. Without it a private lab is brought up (in DIR
// with --lab-dir, as test/nfs/ci.sh asks its runners; else in /tmp) and torn
// down (crash + down --purge). --time-limit: past it the run is a failure
// and ends (ci.sh then tears the lab down by pid). Ends with "N passed, N
// failed"; exit status 1 on failures.

import { existsSync } from 'node:fs';
import { join, resolve as resolvePath } from 'node:path';
import { NODE_FLAGS, ROOT } from '../lib/relockd.js';
import { DEFAULT_LAB_SCRIPT, Lab } from './lab.js';

const arg = (k: string) => process.argv.slice(2).find((a) => a.startsWith(`${k}=`))?.slice(k.length + 1);
const script = resolvePath(arg('--lab-script') ?? process.env.RELOCKD_NFS_LAB_SCRIPT ?? DEFAULT_LAB_SCRIPT);
const given = arg('--lab');
const labDir = arg('--lab-dir');
const timeLimitS = Number(arg('--time-limit') ?? 0);
const id = Date.now().toString(36);
const lab = new Lab(script, given ? resolvePath(given) : labDir ? resolvePath(labDir) : `/tmp/relockd-bytenames-${id}-lab`);
const CLIENT = join(ROOT, 'test', 'nfs', 'bytenames-client.mjs');
const NODE = `/usr/bin/env -u NODE_OPTIONS ${process.execPath}`;

let pass = 0;
let fail = 0;
const report = (ok: boolean, what: string, detail = '') => {
  if (ok) pass++;
  else fail++;
  console.log(`${ok ? 'PASS' : 'FAIL'}  ${what}${detail ? `: ${detail}` : ''}`);
};

async function sh(host: string, cmd: string, timeoutS = 60): Promise<string> {
  const r = await lab.exec(host, cmd, timeoutS);
  if (r.code !== 0) throw new Error(`${host}: ${cmd}\n-> exit ${r.code}\n${r.stdout}${r.stderr}`);
  return r.stdout.trim();
}

const hex = (b: Buffer) => b.toString('hex');
/** A path for the shell, as printf's octal escapes (the name is bytes). */
const shPath = (b: Buffer) => `"$(printf '${[...b].map((c) => (c >= 0x20 && c < 0x7f && c !== 0x27 && c !== 0x5c && c !== 0x25 ? String.fromCharCode(c) : `\\${c.toString(8).padStart(3, '0')}`)).join('')}')"`;

interface Daemon {
  name: string;
  host: string;
  socket: string;
  pidFile: string;
}

async function startRelockd(host: string): Promise<Daemon> {
  const dir = `/run/relockd-bytenames-${id}`;
  await sh(host, `mkdir -p ${dir} && cd ${dir} && (setsid ${NODE} ${NODE_FLAGS.map((f) => `'${f}'`).join(' ')} ${ROOT}/bin/relockd.cjs --runtime-dir ${dir} --socket ${dir}/relockd.sock --log-level debug > ${dir}/log 2>&1 < /dev/null & echo $! > ${dir}/daemon.pid)`);
  await sh(host, `for i in $(seq 600); do grep -q '"msg":"relockd ready"' ${dir}/log && exit 0; sleep 0.1; done; tail -20 ${dir}/log; exit 1`, 90);
  return { name: `relockd@${host}`, host, socket: `${dir}/relockd.sock`, pidFile: `${dir}/daemon.pid` };
}

async function startVirtlockd(host: string): Promise<Daemon> {
  const dir = `/run/virtlockd-bytenames-${id}`;
  await sh(host, `mkdir -p ${dir} && printf 'log_level = 3\\n' > ${dir}/virtlockd.conf && (setsid /usr/sbin/virtlockd -f ${dir}/virtlockd.conf -p ${dir}/virtlockd.pid > ${dir}/log 2>&1 < /dev/null & echo $! > ${dir}/daemon.pid)`);
  await sh(host, `for i in $(seq 300); do [ -S /run/libvirt/virtlockd-sock ] && exit 0; sleep 0.1; done; cat ${dir}/log; exit 1`, 60);
  return { name: `virtlockd@${host}`, host, socket: '/run/libvirt/virtlockd-sock', pidFile: `${dir}/daemon.pid` };
}

const client = (d: Daemon, args: string) => sh(d.host, `${NODE} ${CLIENT} ${d.socket} ${args}`, 90);

/** Starts a holder in the background; resolves with its pid once it answered. */
async function hold(d: Daemon, space: Buffer, name: Buffer, flags: number): Promise<{ pid: number; answer: string }> {
  const out = `/tmp/bytenames-hold-${id}-${Math.random().toString(36).slice(2)}`;
  await sh(d.host, `(setsid ${NODE} ${CLIENT} ${d.socket} hold '${hex(space)}' '${hex(name)}' ${flags} > ${out} 2>&1 < /dev/null &)`);
  const text = await sh(d.host, `for i in $(seq 600); do [ "$(wc -l < ${out})" -ge 2 ] && break; sleep 0.1; done; cat ${out}`, 90);
  const pid = Number(/^pid (\d+)/m.exec(text)?.[1]);
  return { pid, answer: text.split('\n')[1] ?? text };
}

async function pair(a: Daemon, b: Daemon, v: 4 | 3): Promise<void> {
  const tag = `${a.name} <-> ${b.name} NFSv${v === 4 ? '4.2' : '3'}`;
  const base = `relockd-bytenames-${id}-v${v}-${b.name.split('@')[0]}`;
  const mnt = Buffer.from(`/mnt/nfs${v}/${base}`);
  const space = Buffer.concat([mnt, Buffer.from('/lease-space-'), Buffer.from([0xe9])]);
  const lease = Buffer.concat([Buffer.from('lease-'), Buffer.from([0xfe])]);
  const img = Buffer.concat([mnt, Buffer.from('/disk-'), Buffer.from([0xff]), Buffer.from('.raw')]);
  await sh(a.host, `mkdir -p ${shPath(mnt)} && : > ${shPath(img)}`);
  for (const d of [a, b]) report((await client(d, `create-lockspace ${hex(space)}`)) === 'ok', `${tag}  CREATE_LOCKSPACE lease-space-\\xe9 on ${d.name}`);
  for (const [holder, other] of [[a, b], [b, a]] as const) {
    for (const [what, sp, nm, flags] of [['indirect lease-\\xfe (AUTOCREATE)', space, lease, 2], ['direct disk-\\xff.raw', Buffer.alloc(0), img, 0]] as const) {
      const h = await hold(holder, sp, nm, flags);
      const busy = await client(other, `try '${hex(sp)}' '${hex(nm)}' ${flags}`);
      report(h.answer === 'granted' && busy === 'busy', `${tag}  ${what}: ${holder.name} holds, ${other.name} refused`, `holder: ${h.answer}; other: ${busy}`);
      await sh(holder.host, `kill -KILL ${h.pid} 2>/dev/null; true`);
      let after = '';
      for (let i = 0; i < 20 && after !== 'granted'; i++) after = await client(other, `try '${hex(sp)}' '${hex(nm)}' ${flags}`);
      report(after === 'granted', `${tag}  ${what}: after the holder died, ${other.name} granted`, after);
    }
  }
  // The server's own view: exactly the bytes sent, nothing else.
  const exp = `/mnt/disk/export/${base}`;
  const listing = await sh('srv', `python3 -c "import os,sys; d=os.fsencode(sys.argv[1]); print(sorted(n.hex() for n in os.listdir(d)), sorted(n.hex() for n in os.listdir(d + bytes.fromhex('2f6c656173652d73706163652de9'))))" ${exp}`);
  const want = `${JSON.stringify([Buffer.from('disk-\xff.raw', 'latin1').toString('hex'), Buffer.from('lease-space-\xe9', 'latin1').toString('hex')].sort()).replaceAll('"', "'")} ['${hex(lease)}']`;
  report(listing.replaceAll(', ', ',') === want.replaceAll(', ', ','), `${tag}  server: the export holds exactly disk-\\xff.raw and lease-space-\\xe9/lease-\\xfe`, listing);
  await sh(a.host, `rm -rf ${shPath(mnt)}`);
}

async function main(): Promise<void> {
  if (!existsSync(script)) throw new Error(`lab script ${script} not found (--lab-script=PATH or RELOCKD_NFS_LAB_SCRIPT)`);
  if (!given) {
    const up = await lab.up(2);
    if (up.code !== 0) throw new Error(`lab up failed:\n${up.stdout}${up.stderr}`);
  }
  report(true, `lab ${lab.dir}`);
  const daemons: Daemon[] = [];
  try {
    const r1 = await startRelockd('c1');
    daemons.push(r1);
    const v2 = await startVirtlockd('c2');
    daemons.push(v2);
    const r2 = await startRelockd('c2');
    daemons.push(r2);
    for (const v of [4, 3] as const) {
      await pair(r1, v2, v);
      await pair(r1, r2, v);
    }
  } finally {
    for (const d of daemons) await lab.exec(d.host, `kill -KILL "$(cat ${d.pidFile})"`, 30).catch(() => undefined);
    if (!given) {
      for (const h of ['c1', 'c2', 'srv']) await lab.crash(h);
      const down = await lab.down(true);
      report(down.code === 0 && !existsSync(lab.dir), 'cleanup: daemons killed by pid, lab crashed and purged');
    }
  }
}

const t0 = performance.now();
if (timeLimitS > 0) {
  setTimeout(() => {
    report(false, 'time limit', `not done after ${timeLimitS} s`);
    console.log(`${pass} passed, ${fail} failed`);
    process.exit(1);
  }, timeLimitS * 1000).unref();
}
main()
  .catch((e) => report(false, 'harness', (e as Error).stack ?? String(e)))
  .finally(() => {
    console.log(`total ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    console.log(`${pass} passed, ${fail} failed`);
    process.exit(fail ? 1 : 0);
  });
