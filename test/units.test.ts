// The systemd units in units/: `systemd-analyze verify` must pass without a
// word on every unit (relockd's own, and virtlockd's units with the takeover
// drop-in, for Debian 12's virtlockd units and for newer upstream ones), and
// the units must keep the properties the shutdown policy and socket
// activation rely on.

import t from 'tap';
import type { Test } from 'tap';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { takeActivation } from '../src/daemon/activation.js';

const UNITS = fileURLToPath(new URL('../units/', import.meta.url));
const DROPIN = join(UNITS, 'virtlockd-takeover', 'virtlockd.service.d', 'relockd.conf');
const ANALYZE = '/usr/bin/systemd-analyze';
const OWN_UNITS = ['relockd.service', 'relockd.socket', 'relockd-admin.socket'];

// Debian 12's units (libvirt-daemon-system 9.0.0-4+deb12u2), as shipped in /lib/systemd/system.
const DEBIAN: Record<string, string> = {
  'virtlockd.service': `[Unit]
Description=Virtual machine lock manager
Requires=virtlockd.socket
Requires=virtlockd-admin.socket
Before=libvirtd.service
Documentation=man:virtlockd(8)
Documentation=https://libvirt.org

[Service]
Environment=VIRTLOCKD_ARGS=
EnvironmentFile=-/etc/default/virtlockd
ExecStart=/usr/sbin/virtlockd $VIRTLOCKD_ARGS
ExecReload=/bin/kill -USR1 $MAINPID
# Losing the locks is a really bad thing that will
# cause the machine to be fenced (rebooted), so make
# sure we discourage OOM killer
OOMScoreAdjust=-900
# Needs to allow for max guests * average disks per guest
# libvirtd.service written to expect 4096 guests, so if we
# allow for 10 disks per guest, we get:
LimitNOFILE=40960

[Install]
Also=virtlockd.socket
`,
  'virtlockd.socket': `[Unit]
Description=Virtual machine lock manager socket
Before=libvirtd.service

[Socket]
ListenStream=/run/libvirt/virtlockd-sock
SocketMode=0600

[Install]
WantedBy=sockets.target
`,
  'virtlockd-admin.socket': `[Unit]
Description=Virtual machine lock manager admin socket
Before=libvirtd.service
BindsTo=virtlockd.socket
After=virtlockd.socket

[Socket]
ListenStream=/run/libvirt/virtlockd-admin-sock
Service=virtlockd.service
SocketMode=0600

[Install]
WantedBy=sockets.target
`,
};

// Newer upstream libvirt's shape (Type=notify, BindsTo/Wants, LimitNOFILE=1024:524288).
const UPSTREAM: Record<string, string> = {
  ...DEBIAN,
  'virtlockd.service': `[Unit]
Description=libvirt locking daemon
BindsTo=virtlockd.socket
Wants=virtlockd-admin.socket
After=virtlockd.socket
After=virtlockd-admin.socket
Before=libvirtd.service
Documentation=man:virtlockd(8)
Documentation=https://libvirt.org/

[Service]
Type=notify
Environment=VIRTLOCKD_ARGS=
EnvironmentFile=-/etc/sysconfig/virtlockd
ExecStart=/usr/sbin/virtlockd $VIRTLOCKD_ARGS
ExecReload=/bin/kill -USR1 $MAINPID
OOMScoreAdjust=-900
LimitNOFILE=1024:524288

[Install]
WantedBy=multi-user.target
Also=virtlockd.socket
Also=virtlockd-admin.socket
`,
};

type Ini = Record<string, Array<[string, string]>>;

/** systemd unit file -> section -> [key, value] in order (comments and blank lines dropped). */
function parseUnit(text: string): Ini {
  const out: Ini = {};
  let section = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith(';')) continue;
    const m = /^\[(.+)\]$/.exec(line);
    if (m) {
      section = m[1]!;
      out[section] ??= [];
      continue;
    }
    const eq = line.indexOf('=');
    out[section]!.push([line.slice(0, eq).trim(), line.slice(eq + 1).trim()]);
  }
  return out;
}

/** The effective value of a key (the last assignment; an empty one resets a list). */
const get = (ini: Ini, section: string, key: string): string | undefined => ini[section]?.filter(([k]) => k === key).at(-1)?.[1];
const all = (ini: Ini, section: string, key: string): string[] => (ini[section] ?? []).filter(([k]) => k === key).map(([, v]) => v);

const read = (name: string) => readFileSync(join(UNITS, name), 'utf8');

interface Verify {
  status: number | null;
  output: string;
}

/** A scratch unit directory with an executable standing in for /usr/sbin/relockd. */
function scratch(t: Test): { dir: string; units: string; relockd: string; write(rel: string, text: string): string; verify(...names: string[]): Verify } {
  const dir = mkdtempSync(join(tmpdir(), 'relockd-units-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const units = join(dir, 'units');
  mkdirSync(units);
  mkdirSync(join(dir, 'bin'));
  const relockd = join(dir, 'bin', 'relockd');
  writeFileSync(relockd, '#!/bin/sh\nexit 0\n');
  chmodSync(relockd, 0o755);
  return {
    dir,
    units,
    relockd,
    write(rel, text) {
      const p = join(units, rel);
      mkdirSync(join(p, '..'), { recursive: true });
      // verify insists that ExecStart= binaries exist: point it at the stand-in.
      writeFileSync(p, text.replaceAll('/usr/sbin/relockd', relockd));
      return p;
    },
    verify(...names) {
      // The scratch directory first, then the usual unit path (for sockets.target and friends).
      const r = spawnSync(ANALYZE, ['verify', '--man=no', '--recursive-errors=no', ...names.map((n) => join(units, n))], {
        encoding: 'utf8',
        env: { ...process.env, SYSTEMD_UNIT_PATH: `${units}:`, SYSTEMD_LOG_COLOR: '0', SYSTEMD_PAGER: '' },
      });
      return { status: r.status, output: `${r.stdout ?? ''}${r.stderr ?? ''}`.trim() };
    },
  };
}

const noAnalyze = existsSync(ANALYZE) ? false : `${ANALYZE} missing (Debian package systemd)`;

t.test('systemd-analyze verify: relockd.service, relockd.socket, relockd-admin.socket', { skip: noAnalyze }, async (t) => {
  const s = scratch(t);
  for (const name of OWN_UNITS) s.write(name, read(name));
  const r = s.verify(...OWN_UNITS);
  t.equal(r.output, '', 'verify says nothing');
  t.equal(r.status, 0, 'verify succeeds');
  for (const name of OWN_UNITS) {
    const one = s.verify(name);
    t.same(one, { status: 0, output: '' }, `${name} alone`);
  }
});

for (const [flavour, pkg] of [
  ['Debian 12', DEBIAN],
  ['newer upstream', UPSTREAM],
] as const) {
  t.test(`systemd-analyze verify: ${flavour} virtlockd units with the takeover drop-in`, { skip: noAnalyze }, async (t) => {
    const s = scratch(t);
    for (const [name, text] of Object.entries(pkg)) s.write(name, text);
    s.write('virtlockd.service.d/relockd.conf', readFileSync(DROPIN, 'utf8'));
    const r = s.verify('virtlockd.service', 'virtlockd.socket', 'virtlockd-admin.socket');
    t.equal(r.output, '', 'verify says nothing');
    t.equal(r.status, 0, 'verify succeeds');
  });
}

t.test('systemd-analyze verify: the installed virtlockd units with the takeover drop-in', { skip: noAnalyze || (existsSync('/lib/systemd/system/virtlockd.service') ? false : 'virtlockd units not installed') }, async (t) => {
  const s = scratch(t);
  for (const name of ['virtlockd.service', 'virtlockd.socket', 'virtlockd-admin.socket']) s.write(name, readFileSync(join('/lib/systemd/system', name), 'utf8'));
  s.write('virtlockd.service.d/relockd.conf', readFileSync(DROPIN, 'utf8'));
  t.same(s.verify('virtlockd.service', 'virtlockd.socket', 'virtlockd-admin.socket'), { status: 0, output: '' });
});

t.test('the verify harness would notice problems (negative controls)', { skip: noAnalyze }, async (t) => {
  const s = scratch(t);
  for (const [name, text] of Object.entries(DEBIAN)) s.write(name, text);
  // A drop-in is read: a bad key in it is reported with its path.
  const conf = s.write('virtlockd.service.d/relockd.conf', `${readFileSync(DROPIN, 'utf8')}\nNoSuchKey=1\n`);
  let r = s.verify('virtlockd.service');
  t.match(r.output, `${conf}:`, 'the drop-in is read');
  t.match(r.output, /Unknown key .?NoSuchKey/);
  // Without "ExecStart=" (the reset), the drop-in would add a second ExecStart.
  s.write('virtlockd.service.d/relockd.conf', readFileSync(DROPIN, 'utf8').replace(/^ExecStart=$/m, ''));
  r = s.verify('virtlockd.service');
  t.not(r.status, 0);
  t.match(r.output, /more than one ExecStart/, 'the reset line matters');
  // A missing binary fails.
  s.write('relockd.socket', read('relockd.socket'));
  s.write('relockd-admin.socket', read('relockd-admin.socket'));
  s.write('relockd.service', read('relockd.service').replace('/usr/sbin/relockd', '/nonexistent/relockd'));
  r = s.verify('relockd.service');
  t.not(r.status, 0);
  t.match(r.output, /nonexistent\/relockd.*not executable/);
});

// ---- properties the daemon's behaviour relies on ------------------------------------------

t.test('relockd.service: notify, reload = re-exec, never SIGKILLed, limits', async (t) => {
  const u = parseUnit(read('relockd.service'));
  t.equal(get(u, 'Service', 'Type'), 'notify');
  t.equal(get(u, 'Service', 'NotifyAccess'), 'main', 'the re-exec keeps the pid');
  t.match(get(u, 'Service', 'ExecStart'), /^\/usr\/sbin\/relockd .*\$RELOCKD_ARGS$/);
  t.match(get(u, 'Service', 'ExecStart'), /--runtime-dir=\/run\/relockd/, "pid and state files apart from virtlockd's");
  t.equal(get(u, 'Service', 'EnvironmentFile'), '-/etc/default/relockd');
  t.equal(get(u, 'Service', 'ExecReload'), '/bin/kill -USR1 $MAINPID');
  t.equal(get(u, 'Service', 'KillMode'), 'process');
  t.equal(get(u, 'Service', 'KillSignal'), 'SIGTERM');
  t.equal(get(u, 'Service', 'SendSIGKILL'), 'no');
  t.equal(get(u, 'Service', 'TimeoutStopSec'), 'infinity');
  t.equal(get(u, 'Service', 'Restart'), 'on-failure');
  t.equal(get(u, 'Service', 'OOMScoreAdjust'), '-900');
  t.equal(get(u, 'Service', 'LimitNOFILE'), '1024:524288');
  t.equal(get(u, 'Unit', 'Requires'), 'relockd.socket');
  t.equal(get(u, 'Unit', 'Wants'), 'relockd-admin.socket');
  t.match(get(u, 'Unit', 'After'), /relockd\.socket/);
  t.match(get(u, 'Unit', 'Before'), /libvirtd\.service/);
  t.match(get(u, 'Unit', 'Before'), /virtqemud\.service/);
  t.equal(get(u, 'Install', 'WantedBy'), 'multi-user.target');
  for (const f of readdirSync(UNITS, { recursive: true, withFileTypes: true })) {
    if (!f.isFile()) continue;
    const text = readFileSync(join(f.parentPath, f.name), 'utf8');
    t.notMatch(text, /^[^#]*(-HUP|SIGHUP)/m, `${f.name}: no HUP (it would kill virtlockd-style daemons)`);
  }
});

t.test('the takeover drop-in: same process settings as relockd.service', async (t) => {
  const own = parseUnit(read('relockd.service'));
  const d = parseUnit(readFileSync(DROPIN, 'utf8'));
  t.same(all(d, 'Service', 'ExecStart'), ['', '/usr/sbin/relockd $RELOCKD_ARGS'], "resets virtlockd's ExecStart; virtlockd's default paths");
  t.same(all(d, 'Service', 'ExecReload'), ['', '/bin/kill -USR1 $MAINPID']);
  for (const key of ['Type', 'NotifyAccess', 'EnvironmentFile', 'KillMode', 'KillSignal', 'SendSIGKILL', 'TimeoutStopSec', 'Restart', 'RestartSec', 'OOMScoreAdjust', 'LimitNOFILE']) {
    t.equal(get(d, 'Service', key), get(own, 'Service', key), key);
  }
  t.notOk(d.Socket, 'the socket units stay the package ones');
});

t.test('sockets: root only, names the daemon accepts', async (t) => {
  const main = parseUnit(read('relockd.socket'));
  const admin = parseUnit(read('relockd-admin.socket'));
  for (const [name, u] of [
    ['relockd.socket', main],
    ['relockd-admin.socket', admin],
  ] as const) {
    t.equal(get(u, 'Socket', 'SocketMode'), '0600', `${name}: 0600`);
    t.equal(get(u, 'Socket', 'FileDescriptorName'), name, `${name}: fd named after the unit`);
    t.equal(get(u, 'Socket', 'Service'), 'relockd.service');
    const path = get(u, 'Socket', 'ListenStream')!;
    t.match(path, /^\/run\/relockd\//, `${name}: not virtlockd's path (that is the takeover's job)`);
    t.ok(Buffer.byteLength(path) < 108, 'fits sun_path');
  }
  t.equal(get(admin, 'Unit', 'BindsTo'), 'relockd.socket');

  // The names systemd passes in LISTEN_FDNAMES, for our units and for virtlockd's (takeover).
  for (const names of [
    ['relockd.socket', 'relockd-admin.socket'],
    ['virtlockd.socket', 'virtlockd-admin.socket'],
    ['virtlockd-admin.socket', 'virtlockd.socket'],
  ]) {
    const env: NodeJS.ProcessEnv = { LISTEN_PID: String(process.pid), LISTEN_FDS: String(names.length), LISTEN_FDNAMES: names.join(':') };
    const got = takeActivation(env, process.pid);
    const mainFd = 3 + names.findIndex((n) => !n.includes('admin'));
    const adminFd = 3 + names.findIndex((n) => n.includes('admin'));
    t.same(got, { main: [mainFd], admin: [adminFd] }, `LISTEN_FDNAMES=${names.join(':')}`);
  }
});

t.test('/etc/default/relockd example', async (t) => {
  const text = read('relockd.default');
  t.match(text, /^#RELOCKD_ARGS=""$/m, 'everything commented out, like /etc/default/virtlockd');
  t.notMatch(text, /^[^#\n]/m, 'no active line');
});

t.test('takeover README: install and revert', async (t) => {
  const text = readFileSync(join(UNITS, 'virtlockd-takeover', 'README.md'), 'utf8');
  t.match(text, /\/etc\/systemd\/system\/virtlockd\.service\.d\/relockd\.conf/);
  t.match(text, /systemctl daemon-reload/);
  t.match(text, /## Revert/);
});
