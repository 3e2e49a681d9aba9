// The Debian package on a fresh Debian 12 root (npm run test:package; CI).
//
// mmdebstrap builds a minimal bookworm root from Debian's mirror (plus
// python3 and ca-certificates, which the nodejs package needs). Debian 12's
// own nodejs is 18, which relockd does not run on; the package depends on
// nodejs (>= 20.19~), here satisfied by this host's Node 20 nodejs package,
// repacked with dpkg-repack (the package an admin installs from NodeSource).
// In that root, with chroot, its own /proc, /dev and a private tmpfs /run
// (no systemd there, so the maintainer scripts take their no-systemd path):
//   install   dpkg -i; files where they belong, units not enabled, the
//             takeover drop-in not installed into systemd, binaries run;
//   upgrade   with a daemon running and a lease held by `relockctl run`,
//             dpkg -i of a newer version re-execs the daemon in place: same
//             pid, new version, the lease held throughout (probed from
//             outside the root);
//   purge     dpkg --purge leaves no file behind.
// lintian must have nothing to say but the justified overrides.

import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from '../lib/relockd.js';
import { probeOne } from '../lib/probe.js';
import { waitFor } from '../lib/wait.js';

const MIRROR = process.env.RELOCKD_DEBIAN_MIRROR ?? 'http://deb.debian.org/debian';
const work = mkdtempSync(join(tmpdir(), 'relockd-deb-'));
const root = join(work, 'root');
const mounts: string[] = [];
const children: ChildProcess[] = [];
t.teardown(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const m of mounts.reverse()) spawnSync('umount', ['-l', m]);
  rmSync(work, { recursive: true, force: true });
});

function run(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {}) {
  // env -u NODE_OPTIONS: tap's process tracking injects an --import into children's NODE_OPTIONS.
  const r = spawnSync('/usr/bin/env', ['-u', 'NODE_OPTIONS', cmd, ...args], { encoding: 'utf8', env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C.UTF-8', ...opts.env }, cwd: opts.cwd ?? ROOT, maxBuffer: 64 << 20 });
  return { status: r.status, out: `${r.stdout ?? ''}${r.stderr ?? ''}`, stdout: r.stdout ?? '' };
}
const must = <R extends { status: number | null; out: string }>(what: string, r: R): R => {
  if (r.status !== 0) throw new Error(`${what} failed (${r.status}):\n${r.out.slice(-3000)}`);
  return r;
};
const inRoot = (...args: string[]) => run('chroot', [root, ...args]);

const version = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const v2 = `${version}+upgrade1`;
const timed = async <T>(what: string, f: () => T | Promise<T>): Promise<T> => {
  const t0 = Date.now();
  const r = await f();
  t.comment(`${what}: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  return r;
};

const debs = join(work, 'debs');
const deb1 = await timed('npm run package (two versions)', () => {
  const a = must('build-deb', run('sh', ['scripts/build-deb.sh'], { env: { RELOCKD_DEB_OUT: debs, HOME: process.env.HOME } }));
  must('build-deb v2', run('sh', ['scripts/build-deb.sh'], { env: { RELOCKD_DEB_OUT: debs, RELOCKD_DEB_VERSION: v2, HOME: process.env.HOME } }));
  return a.stdout.trim().split('\n').pop()!;
});
const deb2 = join(debs, readdirSync(debs).find((f) => f.includes('+upgrade1'))!);

t.test('lintian: nothing but the justified overrides', async (t) => {
  const r = run('lintian', ['--tag-display-limit', '0', deb1]);
  const tags = r.out.split('\n').filter((l) => /^[EW]: /.test(l));
  t.same(tags, [], `lintian errors/warnings:\n${tags.join('\n')}`);
  t.equal(r.status, 0);
});

await timed('mmdebstrap minbase bookworm', () => must('mmdebstrap', run('mmdebstrap', ['--variant=minbase', '--include=python3,ca-certificates', 'bookworm', root, MIRROR])));
// dpkg-repack's job (the installed package back into a .deb), done with one
// tar pipe instead of a process per file: dpkg-repack took ~3 min here.
const nodeDeb = await timed('repack the installed nodejs', () => {
  const pkg = join(work, 'nodejs-pkg');
  must('mkdir', run('mkdir', ['-p', join(pkg, 'DEBIAN')]));
  const files = must('dpkg-query -L', run('dpkg-query', ['-L', 'nodejs'])).stdout.split('\n').filter((p) => p.startsWith('/') && p !== '/.');
  writeFileSync(join(work, 'nodejs.list'), files.map((p) => p.slice(1)).join('\n') + '\n');
  must('tar', run('sh', ['-c', `tar -C / --no-recursion --ignore-failed-read -cf - -T '${join(work, 'nodejs.list')}' 2>/dev/null | tar -C '${pkg}' -xf -`]));
  const control = must('dpkg-query -s', run('dpkg-query', ['-s', 'nodejs'])).stdout.split('\n').filter((l) => !l.startsWith('Status:')).join('\n');
  writeFileSync(join(pkg, 'DEBIAN', 'control'), control.trimEnd() + '\n');
  for (const s of ['preinst', 'postinst', 'prerm', 'postrm']) {
    const f = `/var/lib/dpkg/info/nodejs.${s}`;
    if (existsSync(f)) copyFileSync(f, join(pkg, 'DEBIAN', s));
  }
  must('dpkg-deb', run('dpkg-deb', ['-Znone', '--root-owner-group', '--build', pkg, join(root, 'tmp', 'nodejs.deb')]));
  rmSync(pkg, { recursive: true, force: true });
  return '/tmp/nodejs.deb';
});
for (const [src, fs, opts] of [['/proc', 'proc', ['-t', 'proc', 'proc']], ['/dev', 'dev', ['--bind', '/dev']], ['/run', 'run', ['-t', 'tmpfs', 'tmpfs']]] as const) {
  must(`mount ${src}`, run('mount', [...opts, join(root, fs)]));
  mounts.push(join(root, fs));
}
copyFileSync(deb1, join(root, 'tmp', 'relockd-1.deb'));
copyFileSync(deb2, join(root, 'tmp', 'relockd-2.deb'));

/** Every file and directory of the root, as paths (what dpkg and we touch aside). */
function inventory(): Set<string> {
  const r = must('find', run('find', [root, '-xdev', '-not', '-path', `${root}/var/lib/dpkg/*`, '-not', '-path', `${root}/var/log/*`, '-not', '-path', `${root}/tmp/*`, '-not', '-path', `${root}/var/tmp/*`, '-not', '-path', `${root}/var/cache/*`]));
  return new Set(r.stdout.split('\n').filter(Boolean).map((p) => p.slice(root.length) || '/'));
}

must('dpkg -i nodejs', inRoot('dpkg', '-i', nodeDeb));
const before = inventory();
let daemon: ChildProcess | null = null;
let daemonLog = '';

t.test('install on a fresh Debian 12', async (t) => {
  const r = inRoot('dpkg', '-i', '/tmp/relockd-1.deb');
  t.equal(r.status, 0, `dpkg -i: ${r.out}`);
  for (const f of ['/usr/sbin/relockd', '/usr/bin/relockctl', '/usr/lib/relockd/build/Release/relockd_native.node', '/usr/lib/relockd/build/Release/relockd_exec_hold.so', '/lib/systemd/system/relockd.service', '/lib/systemd/system/relockd.socket', '/lib/systemd/system/relockd-admin.socket', '/lib/systemd/system/relockd-metrics.timer', '/usr/share/relockd/virtlockd-takeover/virtlockd.service.d/relockd.conf', '/etc/default/relockd', '/usr/share/man/man8/relockd.8.gz', '/usr/share/man/man8/relockctl.8.gz', '/usr/share/doc/relockd/copyright']) {
    t.ok(existsSync(join(root, f)), `installed: ${f}`);
  }
  t.notOk(existsSync(join(root, 'etc/systemd/system/multi-user.target.wants/relockd.service')), 'relockd.service not enabled');
  t.notOk(existsSync(join(root, 'etc/systemd/system/virtlockd.service.d')), 'takeover drop-in not installed into systemd');
  t.equal(inRoot('dpkg-query', '-W', '-f=${Status} ${Version}', 'relockd').stdout, `install ok installed ${version}`);
  const rv = inRoot('/usr/sbin/relockd', '--version');
  t.equal(rv.stdout.trim(), `relockd (relockd) ${version}`, rv.out);
  const cv = inRoot('relockctl', '--version');
  t.equal(cv.stdout.trim(), `relockctl (relockd) ${version}`, cv.out);
  t.match(inRoot('zcat', '/usr/share/man/man8/relockctl.8.gz').stdout, /^\.TH RELOCKCTL 8/m, 'man page relockctl(8)');
});

t.test('an upgrade re-execs the running daemon: same pid, new version, lease held', async (t) => {
  daemon = spawn('/usr/bin/env', ['-u', 'NODE_OPTIONS', 'chroot', root, '/usr/sbin/relockd', '--runtime-dir', '/run/relockd'], { stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' } });
  children.push(daemon);
  daemon.stdout!.on('data', (b) => (daemonLog += b));
  daemon.stderr!.on('data', (b) => (daemonLog += b));
  t.ok(await waitFor(() => daemonLog.includes('"msg":"relockd ready"'), 30000, 50), `daemon ready in the root\n${daemonLog.slice(-2000)}`);
  writeFileSync(join(root, 'var/tmp/disk.img'), '');
  const holder = spawn('/usr/bin/env', ['-u', 'NODE_OPTIONS', 'chroot', root, 'relockctl', '--runtime-dir', '/run/relockd', 'run', '--lease', '/var/tmp/disk.img', '--', 'sleep', '600'], { stdio: 'ignore', env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' } });
  children.push(holder);
  t.ok(await waitFor(() => probeOne(join(root, 'var/tmp/disk.img')) === 'held', 30000, 50), 'lease held (probed from outside the root)');
  const pid = daemon.pid;

  const up = inRoot('dpkg', '-i', '/tmp/relockd-2.deb');
  t.equal(up.status, 0, `dpkg -i (upgrade): ${up.out}`);
  t.match(up.out, /re-executed into the new version \(every lease kept\)/, 'postinst re-exec reported');
  const st = JSON.parse(inRoot('relockctl', '--runtime-dir', '/run/relockd', '--json', 'status').stdout) as { daemon: { version: string; pid: number; leases: number; lastReexec: { result: { ok: boolean }; fromVersion: string; toVersion: string } } };
  t.equal(st.daemon.version, v2, 'daemon runs the new version');
  t.equal(st.daemon.pid, pid, 'same pid');
  t.equal(st.daemon.leases, 1, 'lease still in the table');
  t.same([st.daemon.lastReexec.result.ok, st.daemon.lastReexec.fromVersion, st.daemon.lastReexec.toVersion], [true, version, v2]);
  t.equal(probeOne(join(root, 'var/tmp/disk.img')), 'held', 'lease held after the upgrade');
  t.match(readFileSync(`/proc/${pid}/maps`, 'utf8'), /\/usr\/lib\/relockd\/build\/Release\/relockd_exec_hold\.so/, 'the new image was started with the packaged relockd_exec_hold.so (signals held during the exec)');
  t.equal(holder.exitCode, null, 'the lease holder still runs');

  holder.kill('SIGTERM');
  t.ok(await waitFor(() => probeOne(join(root, 'var/tmp/disk.img')) === 'free', 15000, 50), 'lease released when the holder ends');
  daemon.kill('SIGTERM');
  t.ok(await waitFor(() => daemon!.exitCode !== null, 15000, 50), 'daemon exits on SIGTERM with no lease held');
});

t.test('purge leaves nothing behind', async (t) => {
  const r = inRoot('dpkg', '--purge', 'relockd');
  t.equal(r.status, 0, `dpkg --purge: ${r.out}`);
  const after = inventory();
  const added = [...after].filter((p) => !before.has(p));
  const removed = [...before].filter((p) => !after.has(p));
  t.same(added, [], 'no file left behind');
  t.same(removed, [], 'nothing else removed');
  t.equal(inRoot('dpkg-query', '-W', 'relockd').status, 1, 'package gone from dpkg');
});
