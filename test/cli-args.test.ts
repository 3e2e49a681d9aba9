// The re-exec path parses argv with node:util from the same option table as
// yargs; both must read every argv the same way.
import t from 'tap';
import { parseArgs } from '../src/cli/relockd.js';
import { parseKnownArgs } from '../src/config/relockdOptions.js';

const corpus: string[][] = [
  [],
  ['--socket', '/tmp/x.sock', '--runtime-dir', '/tmp/rt'],
  ['-v', '--log-level', 'warn'],
  ['--term-grace', '1.5', '--storage-timeout', '2'],
  ['--state-file=/tmp/s.json', '--admin-socket', '/tmp/a'],
  ['-p', '/tmp/pid', '-f', '/tmp/conf', '-t', '30', '-d'],
  ['--log-level', 'debug', '--log-level', 'warn', '--runtime-dir', '/a', '--runtime-dir', '/b'],
  ['--lockspace', '/l1', '--lockspace', '/l2'],
];

t.test('yargs and the re-exec parser agree', async (t) => {
  for (const argv of corpus) {
    const y = (await parseArgs(argv)) as unknown as Record<string, unknown>;
    const k = parseKnownArgs(argv) as unknown as Record<string, unknown>;
    const pick = (o: Record<string, unknown>) => Object.fromEntries(Object.keys(k).map((key) => [key, o[key]]));
    t.same(pick(y), k, argv.join(' ') || '(no arguments)');
  }
});

t.test('yargs refuses unknown options; the table has no positional arguments', async (t) => {
  await t.rejects(parseArgs(['--no-such-flag']));
  t.throws(() => parseKnownArgs(['stray']));
});

import { defaultPaths, pathsUnder } from '../src/util/paths.js';

t.test("default paths follow virtlockd's, so libvirt finds relockd unconfigured", async (t) => {
  const root = defaultPaths({}, true);
  t.equal(root.socket, '/run/libvirt/virtlockd-sock');
  t.equal(root.adminSocket, '/run/libvirt/virtlockd-admin-sock');
  t.equal(root.pidFile, '/run/virtlockd.pid');
  t.equal(root.configFile, '/etc/libvirt/virtlockd.conf');
  const user = defaultPaths({ XDG_RUNTIME_DIR: '/run/user/1000', HOME: '/home/u' }, false);
  t.equal(user.socket, '/run/user/1000/libvirt/virtlockd-sock', 'needs no root');
  t.equal(user.configFile, '/home/u/.config/libvirt/virtlockd.conf');
  t.equal(defaultPaths({ HOME: '/home/u' }, false).socket, '/home/u/.cache/libvirt/virtlockd-sock', "GLib's fallback without XDG_RUNTIME_DIR");
  const under = pathsUnder('/tmp/rt', root);
  t.equal(under.socket, '/tmp/rt/virtlockd-sock');
  t.equal(under.stateFile, '/tmp/rt/relockd-restart-exec.json');
  t.equal(under.configFile, root.configFile, '--runtime-dir does not move the configuration');
});
