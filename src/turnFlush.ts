// Writes batched per event-loop turn. Replies and log lines produced while
// one poll phase handles every ready socket are written together at the end
// of that turn (setImmediate runs right after the poll phase): the log gets
// one write(2) per turn instead of one per line, and replies keep their order
// relative to the log lines that describe them (a lease line is written
// before the reply that tells the client about it), because flushers run in
// the order they were first scheduled and each writes all it has.
//
// Lost on SIGKILL: at most the current turn's writes (microseconds of work);
// a reply never written is a dropped connection to the client, as it would
// be anyway. process.exit() and execve (flushTurnNow) write everything.

type Flusher = () => void;

let queue: Flusher[] = [];
let scheduled = false;

/** Runs `f` once at the end of this event-loop turn, after earlier flushers. */
export function atTurnEnd(f: Flusher): void {
  queue.push(f);
  if (!scheduled) {
    scheduled = true;
    setImmediate(flushTurnNow);
  }
}

/** Nothing is waiting for the end of this turn (a write now keeps every order). */
export function turnIdle(): boolean {
  return queue.length === 0;
}

/** Runs every pending flusher now (before execve, at exit, in tests). */
export function flushTurnNow(): void {
  scheduled = false;
  // Flushers may schedule more (a reply written lets the next request run):
  // they run in this same pass.
  while (queue.length) {
    const q = queue;
    queue = [];
    for (const f of q) {
      try {
        f();
      } catch (err) {
        // The others must still run; the error reaches the last-resort handler.
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }
}

process.on('exit', flushTurnNow);
