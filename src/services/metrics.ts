// The daemon's side of the metrics: what a scrape reads from the live
// daemon, and the optional HTTP listener (`metrics_listen`). The admin
// socket's GET_METRICS (relockctl metrics) and the listener serve the same
// text.

import { chmodSync, existsSync, lstatSync, unlinkSync } from 'node:fs';
import type { Server } from 'node:http';
import { AcquireFlags } from '../locks/lockManager.js';
import { DEFAULT_LOCKSPACE_LABEL } from '../metrics/instrument.js';
import { METRICS_CONTENT_TYPE, renderMetrics } from '../metrics/exposition.js';
import type { LockspaceHealthProvider, MetricsSnapshot } from '../metrics/exposition.js';
import { parseMetricsListen } from '../metrics/listen.js';
import type { Logger } from 'pino';
import type { LockManager } from '../locks/lockManager.js';
import type { StorageGate } from '../locks/storageGate.js';
import type { DaemonMetrics } from '../metrics/counters.js';
import { lazyRequire } from '../lazyRequire.js';

/** What the metrics read from the daemon (Daemon implements it). */
export interface MetricsHost {
  readonly log: Logger;
  readonly manager: LockManager;
  readonly gate: Pick<StorageGate, 'stuckKeys'>;
  readonly metrics: DaemonMetrics;
  readonly healthProvider: LockspaceHealthProvider | null;
  readonly lockServer: { readonly name: string; readonly clients: { readonly size: number } };
  readonly adminServer: { readonly name: string; readonly clients: { readonly size: number } } | null;
  readonly lockService: { readonly terminations: { readonly size: number } };
  readonly safeMode: boolean;
  readonly stopping: string | null;
  readonly startedAt: number;
  readonly version: string;
}

/**
 * Until the lock-space health work provides its own, health is what the
 * storage gate knows: a lock space with a call past its deadline is stuck.
 */
function gateHealth(d: MetricsHost): LockspaceHealthProvider {
  return {
    states: ['ok', 'stuck'],
    lockspaceHealth: () => {
      const stuck = new Set(d.gate.stuckKeys());
      return [...d.manager.spaces.keys()].map((dir) => ({ lockspace: dir, state: stuck.has(dir) ? 'stuck' : 'ok' }));
    },
  };
}

function metricsSnapshot(d: MetricsHost): MetricsSnapshot {
  const leases: MetricsSnapshot['leases'] = [];
  const owners = new Set<number>();
  for (const ls of d.manager.allSpaces()) {
    let exclusive = 0;
    let shared = 0;
    for (const r of ls.resources.values()) {
      if ((r.flags & AcquireFlags.SHARED) !== 0) shared += r.owners.length;
      else exclusive += r.owners.length;
      for (const p of r.owners) owners.add(p);
    }
    const lockspace = ls.isDefault ? DEFAULT_LOCKSPACE_LABEL : ls.dir;
    leases.push({ lockspace, mode: 'exclusive', count: exclusive }, { lockspace, mode: 'shared', count: shared });
  }
  const health = d.healthProvider ?? gateHealth(d);
  return {
    counters: d.metrics,
    leases,
    clients: { [d.lockServer.name]: d.lockServer.clients.size, ...(d.adminServer ? { [d.adminServer.name]: d.adminServer.clients.size } : {}) },
    owners: owners.size,
    terminationsInProgress: d.lockService.terminations.size,
    safeMode: d.safeMode,
    draining: d.stopping !== null,
    startTimeSeconds: d.startedAt / 1000,
    version: d.version,
    health: { states: health.states, items: health.lockspaceHealth() },
  };
}

export function daemonMetricsText(d: MetricsHost): Promise<string> {
  return renderMetrics(metricsSnapshot(d));
}

/**
 * The HTTP listener: GET /metrics only. Started after the daemon is ready
 * (node:http is not loaded in the re-exec blackout); a failure to listen is
 * logged and never stops the daemon.
 */
export class MetricsListener {
  private server: Server | null = null;
  private unixPath: string | null = null;

  constructor(private readonly d: MetricsHost) {}

  async start(spec: string): Promise<void> {
    const where = parseMetricsListen(spec);
    const http = lazyRequire('node:http') as typeof import('node:http');
    const server = http.createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { Allow: 'GET, HEAD' }).end();
        return;
      }
      if (path !== '/metrics') {
        res.writeHead(404, { 'Content-Type': 'text/plain' }).end('relockd serves /metrics only\n');
        return;
      }
      daemonMetricsText(this.d).then(
        (text) => res.writeHead(200, { 'Content-Type': METRICS_CONTENT_TYPE }).end(req.method === 'HEAD' ? undefined : text),
        (err: unknown) => {
          this.d.log.error({ err: (err as Error).message }, 'metrics: cannot render');
          res.writeHead(500).end();
        },
      );
    });
    server.on('clientError', (_e, sock) => sock.destroy());
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      if (where.kind === 'unix') {
        // A socket file left by an earlier image (or a crash) is ours to replace; anything else is not.
        if (existsSync(where.path) && lstatSync(where.path).isSocket()) unlinkSync(where.path);
        server.listen(where.path, () => resolve());
      } else {
        server.listen({ host: where.host, port: where.port, exclusive: true }, () => resolve());
      }
    });
    if (where.kind === 'unix') {
      chmodSync(where.path, 0o600);
      this.unixPath = where.path;
    }
    server.on('error', (err) => this.d.log.error({ err: err.message }, 'metrics listener error'));
    this.server = server;
    this.d.log.info({ metricsListen: spec, ...(where.kind === 'tcp' && !where.loopback ? { warning: 'not a loopback address' } : {}) }, 'serving metrics over HTTP at /metrics');
  }

  close(): void {
    this.server?.close();
    this.server = null;
    if (this.unixPath) {
      try {
        unlinkSync(this.unixPath);
      } catch {
        /* gone */
      }
    }
  }
}
