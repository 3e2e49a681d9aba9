// Text formatting for relockctl's human output: aligned tables, local times,
// durations, and the labels for lock spaces and lease modes.

import { display } from '../byteString.js';
import { AcquireFlags } from '../util/acquireFlags.js';

/** Aligned columns, two spaces apart; no trailing blanks. */
export function formatTable(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

function pad2(n: number): string {
  return String(n).padStart(2, '0');
}

/** Local time, second precision: 2025-01-31 14:05:09. */
export function formatTime(ms: number): string {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))}ms`;
  let s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  const parts = [d && `${d}d`, h && `${h}h`, m && `${m}m`, `${s}s`].filter(Boolean) as string[];
  return parts.slice(0, 3).join(' ');
}

export const formatMs = (ms: number) => (ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`);
/** Lock-space paths are byte strings: shown as UTF-8, other bytes as \xHH (src/byteString.ts). */
export const lockspaceLabel = (dir: string) => (dir === '' ? '(default)' : display(dir));
export const modeOf = (flags: number) => ((flags & AcquireFlags.SHARED) !== 0 ? 'shared' : 'exclusive');
