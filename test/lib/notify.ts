// A NOTIFY_SOCKET for tests: a python3 process bound to an AF_UNIX datagram
// socket (Node has none) that prints every message it receives as JSON.

import { spawn } from 'node:child_process';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';

const RECEIVER = `
import socket, sys, json, os
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print(json.dumps({'ready': True}), flush=True)
while True:
    data = s.recv(65536)
    print(json.dumps({'msg': data.decode()}), flush=True)
`;

export class NotifyReceiver {
  readonly messages: string[] = [];
  private constructor(
    readonly path: string,
    private readonly child: ChildProcessWithoutNullStreams,
  ) {}

  static start(path: string): Promise<NotifyReceiver> {
    const child = spawn('python3', ['-u', '-c', RECEIVER, path]);
    return new Promise((resolve, reject) => {
      let buf = '';
      let r: NotifyReceiver | null = null;
      child.stdout.on('data', (d: Buffer) => {
        buf += d.toString();
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = JSON.parse(buf.slice(0, i)) as { ready?: boolean; msg?: string };
          buf = buf.slice(i + 1);
          if (line.ready) {
            r = new NotifyReceiver(path, child);
            resolve(r);
          } else if (line.msg !== undefined && r) r.messages.push(line.msg);
        }
      });
      child.once('exit', (c) => reject(new Error(`notify receiver exited ${c}`)));
    });
  }

  async waitFor(pred: (m: string) => boolean, timeoutMs = 10000): Promise<string> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const m = this.messages.find(pred);
      if (m) return m;
      if (Date.now() > end) throw new Error(`no matching notify message; got ${JSON.stringify(this.messages)}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  stop(): void {
    if (this.child.exitCode === null) this.child.kill('SIGKILL');
  }
}
