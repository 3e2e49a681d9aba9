// Prometheus text exposition of the daemon's metrics, built at scrape time.
// prom-client does the format (names, HELP/TYPE lines, label escaping,
// number rendering); it is loaded on the first scrape only, never at start:
// loading it costs ~38 ms, which would otherwise be part of every re-exec
// blackout. Its metric classes are not used: their inc()/observe() hash
// label sets on every call, while our hot path only increments plain
// numbers (counters.ts); a scrape hands prom-client finished values.
// Naming: Prometheus' naming practices (relockd_ prefix,
// base units, _total counters, _info; no label per resource or pid).

import type { DaemonMetrics } from './counters.js';
import { ACQUIRE_RESULTS, RELEASE_RESULTS, STORAGE_BUCKETS, TERMINATION_OUTCOMES } from './counters.js';
import { lazyRequire } from '../lazyRequire.js';

/** One lock space's health, as the storage-failure work defines it. */
interface LockspaceHealth {
  lockspace: string;
  state: string;
}

/**
 * Where lock-space health comes from. `states` lists every state a lock
 * space can be in (each gets a 0/1 series, the Prometheus way of exporting
 * an enum, so alerts can match `state="..."`).
 */
export interface LockspaceHealthProvider {
  readonly states: readonly string[];
  lockspaceHealth(): LockspaceHealth[];
}

/** What a scrape reads from the live daemon (gauges) plus the running totals. */
export interface MetricsSnapshot {
  counters: DaemonMetrics;
  /** Leases held (owner entries) by lock-space label and mode. */
  leases: Array<{ lockspace: string; mode: 'exclusive' | 'shared'; count: number }>;
  clients: Record<string, number>;
  /** Distinct owner pids holding at least one lease. */
  owners: number;
  terminationsInProgress: number;
  safeMode: boolean;
  draining: boolean;
  /** Daemon start (carried across re-execs), epoch seconds. */
  startTimeSeconds: number;
  version: string;
  health: { states: readonly string[]; items: LockspaceHealth[] };
}

type Labels = Record<string, string | number>;
interface Value {
  value: number;
  labels?: Labels;
  metricName?: string;
}
interface Family {
  name: string;
  help: string;
  type: 'counter' | 'gauge' | 'histogram' | 'info';
  values: Value[];
}

/** The families of one scrape, in a stable order. */
export function families(s: MetricsSnapshot): Family[] {
  const c = s.counters;
  const out: Family[] = [];
  const fam = (name: string, type: Family['type'], help: string, values: Value[]) => out.push({ name, type, help, values });

  fam('relockd_build_info', 'gauge', 'relockd build: always 1, the version and Node.js version are labels', [{ value: 1, labels: { version: s.version, nodejs: process.versions.node } }]);
  fam('relockd_start_time_seconds', 'gauge', 'When the daemon started (kept across re-execs), seconds since the epoch', [{ value: s.startTimeSeconds }]);
  fam('relockd_safe_mode', 'gauge', '1 while in safe mode (a restore went wrong: every inherited lock kept, new acquisitions refused)', [{ value: s.safeMode ? 1 : 0 }]);
  fam('relockd_draining', 'gauge', '1 after a stop was requested while leases are held (new acquisitions refused)', [{ value: s.draining ? 1 : 0 }]);
  fam('relockd_leases', 'gauge', 'Leases held (one per owner of a resource), by lock space and mode', s.leases.map((l) => ({ value: l.count, labels: { lockspace: l.lockspace, mode: l.mode } })));
  fam('relockd_clients', 'gauge', 'Connected clients, by server (virtlockd: the main socket, admin: the admin socket)', Object.entries(s.clients).map(([server, n]) => ({ value: n, labels: { server } })));
  fam('relockd_owners', 'gauge', 'Owners (VM processes) holding at least one lease', [{ value: s.owners }]);
  fam('relockd_owner_terminations_in_progress', 'gauge', 'Owners being terminated because their lock connection closed while holding leases', [{ value: s.terminationsInProgress }]);
  fam('relockd_lease_acquisitions_total', 'counter', 'ACQUIRE_RESOURCE requests by result (granted; busy: held by someone else; refused: safe mode or draining; error: storage or request errors)', ACQUIRE_RESULTS.map((r) => ({ value: c.acquisitions[r], labels: { result: r } })));
  fam('relockd_lease_releases_total', 'counter', 'RELEASE_RESOURCE requests by result', RELEASE_RESULTS.map((r) => ({ value: c.releases[r], labels: { result: r } })));
  fam('relockd_owner_terminations_total', 'counter', 'Lease-holding owners whose lock connection closed, by how they ended (gone: already exited; exited_on_term / exited_on_kill: after relockd signalled them)', TERMINATION_OUTCOMES.map((o) => ({ value: c.terminations[o], labels: { outcome: o } })));
  fam('relockd_reexecs_total', 'counter', 'Live re-execs (SIGUSR1, relockctl reexec, package upgrades) by result', [
    { value: c.reexecs.ok, labels: { result: 'ok' } },
    { value: c.reexecs.failed, labels: { result: 'failed' } },
  ]);
  if (c.lastBlackoutSeconds !== null) {
    fam('relockd_last_reexec_blackout_seconds', 'gauge', 'How long the last successful re-exec held every client', [{ value: c.lastBlackoutSeconds }]);
  }
  const hist: Value[] = [];
  const timeouts: Value[] = [];
  for (const [lockspace, st] of [...c.storage].sort(([a], [b]) => a.localeCompare(b))) {
    let cum = 0;
    STORAGE_BUCKETS.forEach((le, i) => {
      cum += st.buckets[i]!;
      hist.push({ metricName: 'relockd_storage_call_duration_seconds_bucket', value: cum, labels: { lockspace, le } });
    });
    cum += st.buckets[STORAGE_BUCKETS.length]!;
    hist.push({ metricName: 'relockd_storage_call_duration_seconds_bucket', value: cum, labels: { lockspace, le: '+Inf' } });
    hist.push({ metricName: 'relockd_storage_call_duration_seconds_sum', value: st.sum, labels: { lockspace } });
    hist.push({ metricName: 'relockd_storage_call_duration_seconds_count', value: st.count, labels: { lockspace } });
    timeouts.push({ value: st.timeouts, labels: { lockspace } });
  }
  fam('relockd_storage_call_duration_seconds', 'histogram', 'Duration of storage calls (open, lock, close, unlink, ...) by lock space, inline and off-thread', hist);
  fam('relockd_storage_timeouts_total', 'counter', 'Storage calls that overran storage_timeout, by lock space', timeouts);
  const health: Value[] = [];
  for (const h of s.health.items) for (const st of s.health.states) health.push({ value: h.state === st ? 1 : 0, labels: { lockspace: h.lockspace, state: st } });
  fam('relockd_lockspace_health', 'gauge', 'Lock-space health: 1 for the state each lock space is in', health);
  return out;
}

type PromClient = typeof import('prom-client');
let promClient: PromClient | null = null;

/** The exposition text (Prometheus text format 0.0.4). */
export async function renderMetrics(s: MetricsSnapshot): Promise<string> {
  // require, not import(): see src/lazyRequire.ts.
  promClient ??= lazyRequire('prom-client') as PromClient;
  const { Registry } = promClient;
  const reg = new Registry();
  for (const f of families(s)) {
    // A metric object as prom-client's registry reads them (name + get()).
    const metric = { name: f.name, help: f.help, type: f.type, get: async () => ({ name: f.name, help: f.help, type: f.type, values: f.values, aggregator: 'sum' }) };
    reg.registerMetric(metric as unknown as Parameters<typeof reg.registerMetric>[0]);
  }
  return reg.metrics();
}

/** The HTTP Content-Type of renderMetrics' text. */
export const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';
