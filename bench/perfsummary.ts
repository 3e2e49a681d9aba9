// Buckets `perf record -g` samples of a daemon by what its threads were
// doing: the syscall on the stack (open, fcntl, close, socket read/write,
// poll, futex wait/wake = thread hand-offs), GC, or user code; and how much
// of each was spent inside the scheduler (context switches). Works for
// relockd and virtlockd alike, so their per-cycle costs can be compared.
//
//   perf script -i FILE.data -F tid,ip,sym | node dist/bench/perfsummary.js [--main TID]
//
// lockbench --perf DIR records DIR/<daemon>.data for every daemon. For JS
// frame names in relockd's samples add --node-flags=--perf-basic-prof.
// The main thread is the lowest tid seen unless --main is given.
//
// --components (relockd, recorded with --perf-basic-prof): buckets the main
// thread's samples by the part of the request path on the stack instead:
// logging, lock manager (with its open/fcntl/fstat/close), encode, write
// (reply writes, kernel included), decode, dispatch, read (socket read and
// Node's stream machinery), GC, event loop. A sample goes to the first
// bucket in that order that any frame of its stack matches, so a write(2)
// under pino counts as logging and a write(2) of a reply as write.

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

interface Sample {
  tid: number;
  stack: string[];
}

const CATEGORIES: Array<[string, RegExp]> = [
  ['open', /sys_openat|__libc_open64|\bopen64\b/],
  ['fcntl (lock)', /sys_fcntl|__libc_fcntl|fcntl64/],
  ['close', /sys_close|\b__close\b|__GI___close/],
  ['unlink', /sys_unlink/],
  ['stat/fstat', /statx|newfstat|sys_newstat|sys_fstat|__fstat|fstatat/],
  ['socket write', /ksys_write|sys_write|libc_write|writev/],
  ['socket read', /ksys_read|sys_read\b|libc_read/],
  ['poll/epoll wait', /do_sys_poll|sys_poll|epoll_wait|__poll/],
  ['futex wait (hand-off)', /futex_wait|lll_lock_wait|cond_wait/],
  ['futex wake (hand-off)', /futex_wake|cond_signal|lll_lock_wake/],
  ['epoll_ctl', /epoll_ctl/],
  ['other syscall', /do_syscall_64/],
];

function category(stack: string[]): string {
  const s = stack.join(' ');
  for (const [name, re] of CATEGORIES) if (re.test(s)) return name;
  if (stack.some((f) => /Scavenge|Heap::|MarkCompact|ConcurrentMarking/.test(f))) return 'GC';
  return 'user code';
}

/** JS frames of relockd's bundle with one of these function names. */
const JS = (names: string) => new RegExp(`JS:[*~^]?(?:${names}) \\S*relockd[-\\w]*\\.c?m?js`);
const COMPONENTS: Array<[string, RegExp]> = [
  ['logging', JS('asJson|genLog|LOG|write|flush|writeAll|writeMany|child|isLevelEnabled|ownerLog|mixin|stdTimeFunctions|isoTime|formatters|level')],
  ['lock manager', new RegExp(`relockd_native|${JS('acquire|release|lockInline|freeInline|dropOwner|stored|tryJoinHeld|unqueued|inline|lookup|checkName|lockFileSync|releaseFileSync|mode|observe|run|busy').source}`)],
  ['encode', JS('encodePacket|encodeReply|replyOk|replyError')],
  ['write (replies)', /JS:\*?(?:writeOutbox|flushOutbox|send|Writable\.write|_write|writeOrBuffer|writeGeneric|writeBuffer|handleWriteReq|afterWrite\w*|onwrite) |StreamBase::Write|LibuvStreamWrap::DoTryWrite/],
  ['decode', JS('next|take|peek|decodeHeader|u32|i32|string|opaque|fixedOpaque|decode|decodeArgs')],
  ['dispatch', JS('pump|dispatch|handle|finish|finishSync|onData|flushTurnNow|atTurnEnd|processImmediate')],
  ['read (socket + streams)', /JS:\*?(?:onStreamRead|Readable\.push|readableAddChunk\w*|addChunk|emit|maybeReadMore\w*|resume\w*|flow) |OnStreamRead|uv__read|ksys_read/],
  ['GC', /Scavenge|Heap::|MarkCompact|ConcurrentMarking|Sweeper/],
  ['event loop, other', /./],
];

function component(stack: string[]): string {
  for (const [name, re] of COMPONENTS) if (stack.some((f) => re.test(`${f} `))) return name;
  return 'event loop, other';
}

const inScheduler = (stack: string[]) => stack.some((f) => f.startsWith('__schedule') || f.startsWith('finish_task_switch'));

function parse(text: string): Sample[] {
  const out: Sample[] = [];
  let cur: Sample | null = null;
  for (const line of text.split('\n')) {
    if (!line.trim()) {
      if (cur) out.push(cur);
      cur = null;
    } else if (!line.startsWith('\t')) {
      // "  TID " (perf pads the tid); stack frames start with a tab.
      cur = { tid: Number(line.trim().split(/\s+/)[0]), stack: [] };
    } else if (cur) {
      const parts = line.trim().split(/\s+/);
      cur.stack.push(parts.slice(1).join(' ') || '?');
    }
  }
  if (cur) out.push(cur);
  return out;
}

function main(): void {
  const { values } = parseArgs({ options: { main: { type: 'string' }, components: { type: 'boolean', default: false } } });
  const samples = parse(readFileSync(0, 'utf8'));
  if (!samples.length) {
    process.stderr.write('no samples on stdin (pipe `perf script -F tid,ip,sym` into this)\n');
    process.exit(1);
  }
  const mainTid = values.main ? Number(values.main) : Math.min(...samples.map((s) => s.tid));
  const n = samples.length;
  const p = (x: number) => `${((100 * x) / n).toFixed(1).padStart(5)}%`;
  process.stdout.write(`${n} samples; shares are of all the daemon's samples; [in brackets: of which inside the scheduler]\n`);
  if (values.components) {
    const ss = samples.filter((s) => s.tid === mainTid);
    const by = new Map<string, { all: number; sched: number }>();
    for (const s of ss) {
      const c = component(s.stack);
      const e = by.get(c) ?? { all: 0, sched: 0 };
      e.all++;
      if (inScheduler(s.stack)) e.sched++;
      by.set(c, e);
    }
    process.stdout.write(`== main thread by component: ${p(ss.length)}\n`);
    for (const [c] of COMPONENTS) {
      const e = by.get(c);
      if (e) process.stdout.write(`  ${p(e.all)} [${p(e.sched)}]  ${c}\n`);
    }
    return;
  }
  for (const [who, pick] of [
    ['main thread', (t: number) => t === mainTid],
    ['other threads', (t: number) => t !== mainTid],
  ] as const) {
    const ss = samples.filter((s) => pick(s.tid));
    if (!ss.length) continue;
    const by = new Map<string, { all: number; sched: number }>();
    let sched = 0;
    for (const s of ss) {
      const c = category(s.stack);
      const e = by.get(c) ?? { all: 0, sched: 0 };
      e.all++;
      if (inScheduler(s.stack)) {
        e.sched++;
        sched++;
      }
      by.set(c, e);
    }
    process.stdout.write(`== ${who}: ${p(ss.length)} [${p(sched)}]\n`);
    for (const [c, e] of [...by].sort((a, b) => b[1].all - a[1].all)) process.stdout.write(`  ${p(e.all)} [${p(e.sched)}]  ${c}\n`);
  }
}

main();
