// The pure rules behind takeover/handback: virtlockd's command line as its
// getopt reads it, which connections make a takeover wait, the entry script,
// relockd's argv for virtlockd's settings. (Real daemons: takeover.test.ts.)

import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseVirtlockdArgv } from '../src/ctl/procInfo.js';
import { entryScript, relockdArgvFor, relockdNodeFlags, unsafeClients, virtlockdPaths } from '../src/ctl/takeover.js';
import { hasVirtlockdOption, virtlockdArgv } from '../src/services/handback.js';

t.test("virtlockd's argv, as getopt_long(\"df:p:t:vVh\") reads it", async (t) => {
  t.same(parseVirtlockdArgv(['/usr/sbin/virtlockd']), { argv0: '/usr/sbin/virtlockd', daemon: false, verbose: false });
  t.same(parseVirtlockdArgv(['virtlockd', '-dvf', '/etc/x.conf', '-p/run/y.pid', '--timeout=30']), { argv0: 'virtlockd', daemon: true, verbose: true, config: '/etc/x.conf', pidFile: '/run/y.pid', timeout: '30' });
  t.same(parseVirtlockdArgv(['v', '--conf', 'c', '--pid', 'p']), { argv0: 'v', daemon: false, verbose: false, config: 'c', pidFile: 'p' }, 'unambiguous prefixes');
  t.throws(() => parseVirtlockdArgv(['v', '--bogus']), /not understood/);
  t.throws(() => parseVirtlockdArgv(['v', '-x']), /not understood/);
});

t.test("handback: -p and -d found the way virtlockd's getopt finds them", async (t) => {
  t.ok(hasVirtlockdOption(['-p', 'x'], 'p', 'pid-file'));
  t.ok(hasVirtlockdOption(['-vp/x'], 'p', 'pid-file'));
  t.ok(hasVirtlockdOption(['--pid-file=/x'], 'p', 'pid-file'));
  t.notOk(hasVirtlockdOption(['-f', '/var/lib/pd.conf'], 'p', 'pid-file'), "a 'p' inside -f's value is not -p");
  t.notOk(hasVirtlockdOption(['-f/dir/d.conf'], 'd', 'daemon'), "a 'd' inside -f's value is not -d");
  t.notOk(hasVirtlockdOption(['--config', '-d'], 'd', 'daemon'), "-d as --config's value is not -d");
  t.ok(hasVirtlockdOption(['-vd'], 'd', 'daemon'));
  t.same(virtlockdArgv({ path: '/usr/sbin/virtlockd', args: ['-f', 'c'] }, '/run/virtlockd.pid'), ['/usr/sbin/virtlockd', '-f', 'c', '-p', '/run/virtlockd.pid'], "relockd's pid file added");
  t.same(virtlockdArgv({ path: '/usr/sbin/virtlockd', args: ['-p', 'mine'] }, '/run/virtlockd.pid'), ['/usr/sbin/virtlockd', '-p', 'mine'], 'an explicit -p is kept');
});

t.test('takeover waits for connections that may not have registered', async (t) => {
  const qemu = { fd: 10, peers: [{ pid: 100, exe: '/usr/bin/qemu-system-x86_64' }] };
  const libvirtd = { fd: 11, peers: [{ pid: 200, exe: '/usr/sbin/libvirtd' }] };
  const closed = { fd: 12, peers: [] };
  const script = { fd: 13, peers: [{ pid: 300, exe: '/usr/bin/python3.11' }] };
  t.same(unsafeClients([qemu], false), [], "a QEMU guest's connection is safe (registered before QEMU was exec'd)");
  t.match(unsafeClients([libvirtd], false), [/fd 11 \(pid 200 libvirtd\)/], "libvirt's short connections are waited for");
  t.match(unsafeClients([libvirtd], true), [/fd 11/], '--assume-registered does not cover libvirt (CREATE_LOCKSPACE never registers)');
  t.match(unsafeClients([closed], false), [/peer already closed/]);
  t.match(unsafeClients([script], false), [/python3/]);
  t.same(unsafeClients([script, qemu], true), [], '--assume-registered covers other programs');
});

t.test("virtlockd's paths for its uid", async (t) => {
  t.same(virtlockdPaths(0, {}), { socket: '/run/libvirt/virtlockd-sock', adminSocket: '/run/libvirt/virtlockd-admin-sock', pidFile: '/run/virtlockd.pid', stateFile: '/run/virtlockd-restart-exec.json' });
  t.equal(virtlockdPaths(1000, { XDG_RUNTIME_DIR: '/run/user/1000' }).stateFile, '/run/user/1000/libvirt/virtlockd-restart-exec.json');
});

t.test('the entry script: runs only in the expected pid, passes relockd its options', async (t) => {
  const paths = virtlockdPaths(0, {});
  const argv = relockdArgvFor({ argv0: '/usr/sbin/virtlockd', daemon: true, verbose: false, config: "/etc/it's.conf" }, paths, ['--lockspace', '/x']);
  t.same(argv.slice(1, 1 + relockdNodeFlags().length), relockdNodeFlags(), "node's flags from bin/relockd.cjs's shebang");
  t.ok(relockdNodeFlags().includes('--experimental-permission'));
  t.notOk(argv.includes('--daemon') || argv.includes('-d'), 'never daemonizes again');
  for (const x of ['--state-file', '/run/virtlockd-restart-exec.json', '--pid-file', '/run/virtlockd.pid', '--config', "/etc/it's.conf", '--lockspace']) t.ok(argv.includes(x), x);
  const dir = mkdtempSync(join(tmpdir(), 'relockd-entry-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const f = join(dir, 'entry');
  // pid 1 is never us: the script refuses with 75
  writeFileSync(f, entryScript(1, ['/bin/echo', 'x']));
  chmodSync(f, 0o755);
  const r = spawnSync(f, [], { encoding: 'utf8' });
  t.equal(r.status, 75, 'another pid: exit 75');
  t.match(r.stderr, /takeover of pid 1 is in progress/);
  // a script that accepts any pid: check the quoting and the marker
  writeFileSync(f, entryScript(1, ['/bin/sh', '-c', 'printf "%s|%s" "$RELOCKD_REEXEC" "$1"', 'sh', "it's"]).replace('if [ "$$" != "1" ]', 'if false'));
  const r2 = spawnSync(f, [], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '--foo' } });
  t.equal(r2.status, 0);
  t.match(r2.stdout, /^\d+:\|it's$/, 'RELOCKD_REEXEC=PID: and a quoted argument survive');
});
