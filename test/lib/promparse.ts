// Prometheus text checked by real parsers: Debian's promtool (`promtool
// check metrics`, which also lints names and units) and the Python client's
// parser (python3-prometheus-client), which yields the samples.

import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

const PROMTOOL = ['/usr/bin/promtool', '/bin/promtool'].find((p) => existsSync(p)) ?? null;

/** promtool check metrics: exit status and what it printed (lint problems). */
export function promtoolCheck(text: string): { status: number | null; output: string } {
  if (!PROMTOOL) throw new Error('promtool not installed (Debian package prometheus)');
  const r = spawnSync(PROMTOOL, ['check', 'metrics'], { input: text, encoding: 'utf8' });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

const PY = `
import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    for s in f.samples:
        out.append({"name": s.name, "labels": s.labels, "value": s.value, "type": f.type})
print(json.dumps(out))
`;

/** Every sample, parsed by prometheus_client (throws on a format error). */
export function parseSamples(text: string): Sample[] {
  const r = spawnSync('/usr/bin/python3', ['-c', PY], { input: text, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`prometheus_client parser failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as Sample[];
}

/** The value of the one sample matching name and labels (undefined: none). */
export function valueOf(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const m = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  if (m.length > 1) throw new Error(`${name} ${JSON.stringify(labels)} matches ${m.length} samples`);
  return m[0]?.value;
}
