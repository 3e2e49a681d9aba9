// relockd_exec_hold.so: preloaded (LD_PRELOAD) into the image a re-exec
// starts, and only there (src/daemon/execSignals.ts).
//
// Why: from execve until the new image has installed its signal handlers,
// SIGTERM, SIGHUP, SIGINT ... have their default action, which ends the
// process and so drops every lock (measured: a SIGTERM, SIGHUP or SIGUSR2
// sent right after the exec killed the daemon every time). The old image
// blocks them before execve and the mask survives it, but Node's start-up
// sets the mask again (pthread_sigmask(SIG_SETMASK, {SIGUSR1})), which
// unblocks them ~2 ms into a window of ~20 ms and more.
//
// What: while holding, the signals named in RELOCKD_EXEC_HOLD stay in every
// mask set with SIG_SETMASK and are left out of every SIG_UNBLOCK, so they
// stay blocked through Node's and libuv's own mask changes; a signal sent
// meanwhile stays pending. The daemon ends the hold once its handlers are in
// place (relockd_exec_hold_release, through the addon), then unblocks them
// itself. Without RELOCKD_EXEC_HOLD nothing is held and every call passes
// straight through.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

// Signals 1..63 still held, one bit each (read from any thread).
static uint64_t held;
// The process that holds them. A child forked meanwhile must not inherit a
// hold nobody would end: libuv's spawn already resets the child's mask
// (native.test checks the child blocks nothing); this also covers any
// other fork.
static pid_t holder;

static uint64_t bit(int sig) { return (sig > 0 && sig < 64) ? (UINT64_C(1) << sig) : 0; }

// Adds the held signals to a SIG_SETMASK set, takes them out of a SIG_UNBLOCK one.
static const sigset_t* adjust(int how, const sigset_t* set, sigset_t* copy) {
  uint64_t h = __atomic_load_n(&held, __ATOMIC_ACQUIRE);
  if (!h || !set || (how != SIG_SETMASK && how != SIG_UNBLOCK) || getpid() != holder) return set;
  *copy = *set;
  for (int sig = 1; sig < 64; sig++) {
    if (!(h & bit(sig))) continue;
    if (how == SIG_SETMASK) sigaddset(copy, sig);
    else sigdelset(copy, sig);
  }
  return copy;
}

typedef int (*mask_fn)(int, const sigset_t*, sigset_t*);
static mask_fn real_pthread_sigmask;
static mask_fn real_sigprocmask;

int pthread_sigmask(int how, const sigset_t* set, sigset_t* old) {
  sigset_t copy;
  return real_pthread_sigmask(how, adjust(how, set, &copy), old);
}

int sigprocmask(int how, const sigset_t* set, sigset_t* old) {
  sigset_t copy;
  return real_sigprocmask(how, adjust(how, set, &copy), old);
}

// Ends the hold: mask changes pass through unchanged from now on. The
// caller unblocks the signals (after taking out those it has no handler for).
__attribute__((visibility("default"))) void relockd_exec_hold_release(void) {
  __atomic_store_n(&held, 0, __ATOMIC_RELEASE);
}

// Reads the list ("1,2,15"), looks up the real functions (before any thread
// exists), and takes this library out of the environment so that nothing
// the daemon starts inherits it.
__attribute__((constructor)) static void exec_hold_init(void) {
  real_pthread_sigmask = (mask_fn)dlsym(RTLD_NEXT, "pthread_sigmask");
  real_sigprocmask = (mask_fn)dlsym(RTLD_NEXT, "sigprocmask");
  const char* list = getenv("RELOCKD_EXEC_HOLD");
  if (list) {
    uint64_t h = 0;
    for (const char* p = list; *p;) {
      char* end;
      long sig = strtol(p, &end, 10);
      if (end == p) break;
      h |= bit((int)sig);
      p = *end == ',' ? end + 1 : end;
    }
    holder = getpid();
    __atomic_store_n(&held, h, __ATOMIC_RELEASE);
    unsetenv("RELOCKD_EXEC_HOLD");
  }
  // The old image put this library first in LD_PRELOAD and what was there
  // before in RELOCKD_EXEC_HOLD_PRELOAD ("" for nothing).
  const char* was = getenv("RELOCKD_EXEC_HOLD_PRELOAD");
  if (was) {
    if (*was) setenv("LD_PRELOAD", was, 1);
    else unsetenv("LD_PRELOAD");
    unsetenv("RELOCKD_EXEC_HOLD_PRELOAD");
  }
}
