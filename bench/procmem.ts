// A daemon's memory as the kernel counts it (/proc/<pid>/status and
// smaps_rollup), for both benchmarks. RSS counts every resident page mapped,
// including clean pages of the executable and libraries that other
// processes share (for relockd most of its RSS is the node binary's text);
// anon is the process's own private memory (heap, stacks, JIT code).

import { readFileSync } from 'node:fs';

export interface ProcMem {
  /** VmRSS, kB */
  rssKb: number;
  /** RssAnon, kB: private anonymous memory */
  anonKb: number;
  /** RssFile, kB: resident file-backed pages (binary, libraries) */
  fileKb: number;
  /** Pss from smaps_rollup, kB: shared pages divided among their users (-1: unreadable) */
  pssKb: number;
}

function field(text: string, name: string): number {
  const m = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text);
  return m ? Number(m[1]) : -1;
}

/** Memory of `pid`, or null when it is gone. */
export function procMem(pid: number): ProcMem | null {
  let status: string;
  try {
    status = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return null;
  }
  let pss = -1;
  try {
    pss = field(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'), 'Pss');
  } catch {
    /* older kernel */
  }
  return { rssKb: field(status, 'VmRSS'), anonKb: field(status, 'RssAnon'), fileKb: field(status, 'RssFile'), pssKb: pss };
}

export const fmtMb = (kb: number): string => (kb >= 0 && Number.isFinite(kb) ? (kb / 1024).toFixed(1) : '-');
