// A libvirt-like lock client for test/nfs/bytenames-crosshost.ts, run inside a
// lab guest: names travel as hex on the command line (they are bytes, and
// argv would force UTF-8) and go on the wire byte for byte.
//
//   node bytenames-client.mjs SOCKET create-lockspace PATH_HEX
//   node bytenames-client.mjs SOCKET try  PATH_HEX NAME_HEX FLAGS   -> prints granted | busy | error: …
//   node bytenames-client.mjs SOCKET hold PATH_HEX NAME_HEX FLAGS   -> prints "pid N", then granted | busy | error: …,
//                                                                       and holds the lease until killed
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { LockspaceClient } = await import(join(ROOT, 'dist', 'src', 'protocol', 'lockspaceClient.js'));

const [socket, mode, pathHex, nameHex, flags] = process.argv.slice(2);
const bytes = (h) => Buffer.from(h ?? '', 'hex');
const say = (s) => process.stdout.write(`${s}\n`);

const c = await LockspaceClient.connect(socket);
try {
  if (mode === 'create-lockspace') {
    await c.createLockspace(bytes(pathHex));
    say('ok');
    process.exit(0);
  }
  if (mode === 'hold') say(`pid ${process.pid}`);
  await c.register({ uuid: '0badc0de-0000-4000-8000-000000000001', name: `bytes-${process.pid}`, id: 1, pid: process.pid });
  await c.acquire(bytes(pathHex), bytes(nameHex), Number(flags));
  say('granted');
  if (mode === 'try') {
    await c.release(bytes(pathHex), bytes(nameHex), 0);
    process.exit(0);
  }
  setInterval(() => {}, 1 << 30);
} catch (e) {
  say(e && e.code === 87 ? 'busy' : `error: ${e && e.message}`);
  process.exit(0);
}
