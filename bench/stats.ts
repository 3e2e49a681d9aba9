// Small formatting and statistics helpers shared by the benchmarks
// (lockbench, reexecbench, and lockbench's generator, worker.ts).

import { readFileSync } from 'node:fs';

/** Host CPU jiffies from /proc/stat (all CPUs): busy and total. */
export function hostJiffies(): { busy: number; total: number } {
  const line = readFileSync('/proc/stat', 'latin1').split('\n', 1)[0]!;
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest* are inside user)
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = (v[3] ?? 0) + (v[4] ?? 0);
  return { busy: total - idle, total };
}

export function median(xs: number[]): number {
  const v = xs.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  if (!v.length) return NaN;
  const m = v.length >> 1;
  return v.length % 2 ? v[m]! : (v[m - 1]! + v[m]!) / 2;
}

export const fmt1 = (n: number): string => (Number.isNaN(n) ? '-' : n.toFixed(1));

/** ms with a precision that suits the size; '-' for NaN or a negative "none". */
export function fmtMs(n: number): string {
  if (Number.isNaN(n) || n < 0) return '-';
  return n >= 100 ? Math.round(n).toLocaleString('en-US') : n.toFixed(1);
}

/** Left-aligns the first three columns and those headed '' or 'aim', right-aligns the rest. */
export function table(rows: string[][], header: string[]): string {
  const all = [header, ...rows];
  const w = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => (i < 3 || header[i] === '' || header[i] === 'aim' ? (c ?? '').padEnd(w[i]!) : (c ?? '').padStart(w[i]!)))
      .join('  ')
      .trimEnd();
  return [line(header), w.map((n) => '-'.repeat(n)).join('  ').trimEnd(), ...rows.map(line)].join('\n');
}
