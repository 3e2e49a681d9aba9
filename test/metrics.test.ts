// Prometheus metrics of a real relockd: `relockctl metrics` (admin socket)
// and the HTTP listener (metrics_listen), checked with promtool and the
// Python client's parser; values follow real lease traffic, an owner killed
// while holding a lease, and survive a re-exec.

import t from 'tap';
import { spawnSync } from 'node:child_process';
import http from 'node:http';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cleanEnv, ENV_PREFIX, ROOT, startRelockd } from './lib/relockd.js';
import { spawnOwner } from './lib/targets.js';
import { parseSamples, promtoolCheck, valueOf } from './lib/promparse.js';
import type { Sample } from './lib/promparse.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';
import { parseConfig } from '../src/config/config.js';
import { parseMetricsListen } from '../src/metrics/listen.js';
import { DaemonMetrics } from '../src/metrics/counters.js';
import { families } from '../src/metrics/exposition.js';
import { waitFor } from './lib/wait.js';

const CTL = join(ROOT, 'bin', 'relockctl.cjs');
const work = mkdtempSync(join(tmpdir(), 'relockd-metrics-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

const space = join(work, 'leases');
const httpSock = join(work, 'metrics.sock');
const conf = join(work, 'relockd.conf');
writeFileSync(conf, `metrics_listen = "${httpSock}"\nlockspaces = [ "${space}" ]\n`);

const d = await startRelockd({ args: ['-f', conf], logLevel: 'info' });
t.teardown(() => d.stop());

function ctlMetrics(): string {
  const r = spawnSync('/usr/bin/env', [...ENV_PREFIX, process.execPath, CTL, '--runtime-dir', d.dir, 'metrics'], { env: cleanEnv(), encoding: 'utf8', timeout: 30000 });
  if (r.status !== 0) throw new Error(`relockctl metrics: ${r.status} ${r.stderr}`);
  return r.stdout;
}

function httpGet(path: string): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    http
      // agent: false: no keep-alive reuse of a socket the server may have closed after 5 s idle
      .get({ socketPath: httpSock, path, agent: false }, (res) => {
        let body = '';
        res.on('data', (b) => (body += b));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), body }));
      })
      .on('error', reject);
  });
}

function checked(t: { equal(a: unknown, b: unknown, m: string): unknown }, text: string): Sample[] {
  const lint = promtoolCheck(text);
  t.equal(lint.status, 0, `promtool check metrics accepts it${lint.output ? `: ${lint.output}` : ''}`);
  t.equal(lint.output.trim(), '', 'promtool has no lint complaint (names, units, _total)');
  return parseSamples(text);
}

const UUID = '00112233-4455-6677-8899-aabbccddeeff';
const img = (n: string) => {
  const p = join(work, n);
  writeFileSync(p, '');
  return p;
};

t.test('lease traffic shows in the counters and gauges', async (t) => {
  const a = await LockspaceClient.connect(d.socketPath);
  const b = await LockspaceClient.connect(d.socketPath);
  t.teardown(() => (a.close(), b.close()));
  await a.register({ uuid: UUID, name: 'a', id: 1, pid: 70001 });
  await b.register({ uuid: UUID, name: 'b', id: 2, pid: 70002 });
  const x = img('x.img');
  const s = img('s.img');
  await a.acquire('', x, 0); // granted, exclusive
  await t.rejects(b.acquire('', x, 0)); // busy
  await a.acquire('', s, 1); // shared
  await b.acquire('', s, 1); // shared, second owner
  await a.acquire(space, 'lease-1', 2); // lock space, autocreate
  await a.release(space, 'lease-1'); // released
  await t.rejects(b.release('', x)); // error: not the owner
  await t.rejects(a.acquire('', 'relative', 0)); // error: bad name

  const m = checked(t, ctlMetrics());
  t.equal(valueOf(m, 'relockd_lease_acquisitions_total', { result: 'granted' }), 4);
  t.equal(valueOf(m, 'relockd_lease_acquisitions_total', { result: 'busy' }), 1);
  t.equal(valueOf(m, 'relockd_lease_acquisitions_total', { result: 'error' }), 1);
  t.equal(valueOf(m, 'relockd_lease_acquisitions_total', { result: 'refused' }), 0);
  t.equal(valueOf(m, 'relockd_lease_releases_total', { result: 'released' }), 1);
  t.equal(valueOf(m, 'relockd_lease_releases_total', { result: 'error' }), 1);
  t.equal(valueOf(m, 'relockd_leases', { lockspace: 'default', mode: 'exclusive' }), 1);
  t.equal(valueOf(m, 'relockd_leases', { lockspace: 'default', mode: 'shared' }), 2);
  t.equal(valueOf(m, 'relockd_leases', { lockspace: space, mode: 'exclusive' }), 0);
  t.equal(valueOf(m, 'relockd_owners'), 2);
  t.equal(valueOf(m, 'relockd_clients', { server: 'virtlockd' }), 2);
  t.equal(valueOf(m, 'relockd_safe_mode'), 0);
  t.equal(valueOf(m, 'relockd_build_info', { version: JSON.parse(spawnSync('cat', [join(ROOT, 'package.json')], { encoding: 'utf8' }).stdout).version }), 1);
  t.equal(valueOf(m, 'relockd_lockspace_health', { lockspace: space, state: 'healthy' }), 1);
  t.equal(valueOf(m, 'relockd_lockspace_health', { lockspace: space, state: 'failed' }), 0);
  // the lock-space calls (lock, release+unlink) are in the histogram under the directory's label
  t.ok((valueOf(m, 'relockd_storage_call_duration_seconds_count', { lockspace: space }) ?? 0) >= 2, 'storage calls of the lock space counted');
  t.equal(valueOf(m, 'relockd_storage_call_duration_seconds_bucket', { lockspace: space, le: '+Inf' }), valueOf(m, 'relockd_storage_call_duration_seconds_count', { lockspace: space }), '+Inf bucket = count');
  t.equal(valueOf(m, 'relockd_storage_timeouts_total', { lockspace: space }), 0);
  for (const s of m) t.notOk(/\/x\.img|70001|70002/.test(JSON.stringify(s.labels)), `no per-resource or per-pid label: ${s.name}`);

  // an owner killed while holding its lease: terminated as 'gone'
  const o = spawnOwner(d.socketPath, [{ path: '', name: img('o.img'), flags: 0 }]);
  await o.ready;
  o.child.kill('SIGKILL');
  t.ok(await waitFor(() => valueOf(parseSamples(ctlMetrics()), 'relockd_owner_terminations_total', { outcome: 'gone' }) === 1, 10000, 50), 'owner termination counted (outcome gone)');
});

t.test('the HTTP listener serves the same text at /metrics only', async (t) => {
  const r = await httpGet('/metrics');
  t.equal(r.status, 200);
  t.match(r.type, /^text\/plain; version=0\.0\.4/);
  const m = checked(t, r.body);
  t.equal(valueOf(m, 'relockd_lease_acquisitions_total', { result: 'granted' }), valueOf(parseSamples(ctlMetrics()), 'relockd_lease_acquisitions_total', { result: 'granted' }));
  t.equal((await httpGet('/')).status, 404);
});

t.test('counters survive a re-exec; the re-exec is counted', async (t) => {
  const before = parseSamples(ctlMetrics());
  await d.reexec!();
  const after = checked(t, ctlMetrics());
  for (const [name, labels] of [
    ['relockd_lease_acquisitions_total', { result: 'granted' }],
    ['relockd_lease_acquisitions_total', { result: 'busy' }],
    ['relockd_lease_releases_total', { result: 'released' }],
    ['relockd_owner_terminations_total', { outcome: 'gone' }],
    ['relockd_storage_call_duration_seconds_count', { lockspace: space }],
    ['relockd_start_time_seconds', {}],
  ] as const) {
    t.equal(valueOf(after, name, labels), valueOf(before, name, labels), `${name} ${JSON.stringify(labels)} carried`);
  }
  t.equal(valueOf(after, 'relockd_reexecs_total', { result: 'ok' }), 1);
  const blackout = valueOf(after, 'relockd_last_reexec_blackout_seconds');
  t.ok(blackout !== undefined && blackout > 0 && blackout < 10, `last blackout exported (${blackout} s)`);
  // and the new image serves HTTP again
  t.ok(await waitFor(async () => (await httpGet('/metrics').catch(() => ({ status: 0 }))).status === 200, 10000, 50), 'HTTP listener back after the re-exec');
});

t.test('metrics_listen: loopback or a socket path; no wildcard, no host names', async (t) => {
  t.same(parseMetricsListen('127.0.0.1:9855'), { kind: 'tcp', host: '127.0.0.1', port: 9855, loopback: true });
  t.same(parseMetricsListen('[::1]:9855'), { kind: 'tcp', host: '::1', port: 9855, loopback: true });
  t.same(parseMetricsListen('/run/relockd/metrics.sock'), { kind: 'unix', path: '/run/relockd/metrics.sock' });
  t.equal((parseMetricsListen('192.0.2.1:9855') as { loopback: boolean }).loopback, false);
  for (const bad of ['0.0.0.0:9855', '[::]:9855', 'localhost:9855', '127.0.0.1', '127.0.0.1:0', '::1:9855', 'rel/ative']) {
    t.throws(() => parseMetricsListen(bad), `refused: ${bad}`);
  }
  t.throws(() => parseConfig('metrics_listen = "0.0.0.0:9855"\n', '/etc/x.conf'), /x\.conf:1:.*metrics_listen.*wildcard/);
});

t.test('loopback TCP listener', async (t) => {
  const port = 20000 + Math.floor(Math.random() * 30000);
  const c2 = join(work, 'tcp.conf');
  writeFileSync(c2, `metrics_listen = "127.0.0.1:${port}"\n`);
  const d2 = await startRelockd({ args: ['-f', c2], logLevel: 'info' });
  t.teardown(() => d2.stop());
  t.ok(await waitFor(() => d2.logs().includes('serving metrics over HTTP'), 10000, 20), 'listener up');
  const body = await new Promise<string>((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: '/metrics', agent: false }, (res) => {
      let b = '';
      res.on('data', (x) => (b += x));
      res.on('end', () => resolve(b));
    }).on('error', reject);
  });
  t.equal(valueOf(checked(t, body), 'relockd_safe_mode'), 0);
});

t.test('counters module: restore tolerates other documents', async (t) => {
  const m = new DaemonMetrics();
  m.acquisitions.granted = 5;
  m.observeStorage('default', 0.05); // 50 µs
  m.observeStorage('default', 40000); // 40 s: above the last bound
  const saved = m.save();
  const n = new DaemonMetrics();
  n.restore(JSON.parse(JSON.stringify(saved)));
  n.restore({ storage: { bad: { buckets: [1], sum: 1, count: 1, timeouts: 0 } } } as never); // other bucket bounds: dropped
  n.restore(undefined);
  t.equal(n.acquisitions.granted, 5);
  t.same(n.storage.get('default')!.buckets, saved.storage.default!.buckets);
  t.notOk(n.storage.has('bad'));
  const fam = families({ counters: n, leases: [], clients: {}, owners: 0, terminationsInProgress: 0, safeMode: false, draining: false, startTimeSeconds: 0, version: 'x', health: { states: [], items: [] } });
  const h = fam.find((f) => f.name === 'relockd_storage_call_duration_seconds')!;
  const inf = h.values.find((v) => v.labels?.le === '+Inf')!;
  t.equal(inf.value, 2);
  t.equal(h.values.find((v) => v.labels?.le === 0.0001)!.value, 1);
});
