// relockd native addon: the Linux calls Node does not expose (OFD locks,
// FD_CLOEXEC, SO_PEERCRED, execve, sd_notify, signal masks, pidfds), plus the
// open+lock and unlink+close sequences run on the libuv pool, because storage
// (NFS) can hang and the daemon's event loop must not.
//
// Built with C++ exceptions (node_addon_api_except): argument errors throw
// TypeError/RangeError, failed system calls throw an Error with
// code = errno name, errno = positive errno number, syscall = call label.

#include <napi.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <elf.h>
#include <limits.h>
#include <link.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/auxv.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

// Fallbacks for older headers (x86_64 / asm-generic numbers).
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77  // Linux 6.5
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

// PIDFD_GET_INFO (Linux 6.13) with PIDFD_INFO_EXIT (6.15); Debian 12's
// headers have neither. The kernel takes any size >= the first published
// struct (64 bytes, PIDFD_INFO_SIZE_VER0, which already holds exit_code),
// so this is the prefix we need under names of our own.
struct RelockdPidfdInfo {
  uint64_t mask;
  uint64_t cgroupid;
  uint32_t pid, tgid, ppid, ruid, rgid, euid, egid, suid, sgid, fsuid, fsgid;
  int32_t exit_code;  // a wait(2) status
};
static_assert(sizeof(RelockdPidfdInfo) == 64, "PIDFD_INFO_SIZE_VER0");
constexpr uint64_t kPidfdInfoExit = 1ULL << 3;  // PIDFD_INFO_EXIT
constexpr unsigned long kPidfdGetInfo = _IOWR(0xFF, 11, RelockdPidfdInfo);  // PIDFS_IOCTL_MAGIC, 11

namespace {

constexpr double kMaxSafeInteger = 9007199254740991.0;  // 2^53 - 1
constexpr int kMaxLockAttempts = 100;

// ---- errors ---------------------------------------------------------------

const char* ErrnoName(int err) {
  const char* name = strerrorname_np(err);  // glibc >= 2.32
  return name ? name : "EUNKNOWN";
}

std::string ErrnoText(int err) {
  const char* text = strerrordesc_np(err);  // glibc >= 2.32; strerror's text
  return text ? text : "Unknown error " + std::to_string(err);
}

// Shaped like Node's own system errors, but errno is the positive C value.
// syscall is a plain C string so that `SysError(env, errno, "x")` allocates
// nothing (and cannot disturb errno) before errno is read.
Napi::Error SysError(Napi::Env env, int err, const char* syscall,
                     const char* stage = nullptr, const char* detail = nullptr) {
  Napi::Error e = Napi::Error::New(
      env, std::string(syscall) + ": " + (detail ? detail : ErrnoText(err)));
  e.Set("code", ErrnoName(err));
  e.Set("errno", static_cast<double>(err));
  e.Set("syscall", syscall);
  if (stage) e.Set("stage", stage);
  return e;
}

// A failure recorded on a worker thread (no JS there); made into an Error later.
struct Failure {
  int err = 0;
  const char* syscall = nullptr;
  const char* stage = nullptr;
  const char* detail = nullptr;
};

Napi::Value FailureValue(Napi::Env env, const Failure& f) {
  return SysError(env, f.err, f.syscall, f.stage, f.detail).Value();
}

// ---- argument checks --------------------------------------------------------

[[noreturn]] void ThrowType(Napi::Env env, const std::string& msg) {
  throw Napi::TypeError::New(env, msg);
}

[[noreturn]] void ThrowRange(Napi::Env env, const std::string& msg) {
  throw Napi::RangeError::New(env, msg);
}

double ToIntOrThrow(Napi::Env env, Napi::Value v, const std::string& name,
                    double min, double max) {
  if (!v.IsNumber()) ThrowType(env, name + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::trunc(d) != d || d < min || d > max) {
    ThrowRange(env, name + " must be an integer from " +
                        std::to_string(static_cast<long long>(min)) + " to " +
                        std::to_string(static_cast<long long>(max)));
  }
  return d;
}

// The Int32Array of fds the batched fd calls take.
Napi::Int32Array FdsArg(Napi::Env env, Napi::Value v) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) ThrowType(env, "fds must be an Int32Array");
  return v.As<Napi::Int32Array>();
}

int64_t IntArg(const Napi::CallbackInfo& info, size_t i, const char* name,
               double min, double max) {
  return static_cast<int64_t>(ToIntOrThrow(info.Env(), info[i], name, min, max));
}

int FdArg(const Napi::CallbackInfo& info, size_t i, const char* name = "fd") {
  return static_cast<int>(IntArg(info, i, name, 0, INT_MAX));
}

// Byte offsets and lengths: non-negative, and exact as JS numbers.
off_t OffsetArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return static_cast<off_t>(IntArg(info, i, name, 0, kMaxSafeInteger));
}

std::string StringValue(Napi::Env env, Napi::Value v, const std::string& name) {
  if (!v.IsString()) ThrowType(env, name + " must be a string");
  std::string s = v.As<Napi::String>().Utf8Value();
  // C strings would silently cut at the NUL.
  if (s.find('\0') != std::string::npos)
    ThrowType(env, name + " must not contain NUL characters");
  return s;
}

// A path as a byte string (one JS char per byte, src/byteString.ts): file
// names are bytes, not necessarily UTF-8, so they must not go through UTF-8.
std::string BytesValue(Napi::Env env, Napi::Value v, const std::string& name) {
  if (!v.IsString()) ThrowType(env, name + " must be a string");
  size_t len = 0;
  napi_status st = napi_get_value_string_latin1(env, v, nullptr, 0, &len);
  if (st != napi_ok) ThrowType(env, name + " must be a string");
  std::string s(len, '\0');
  if (len > 0) napi_get_value_string_latin1(env, v, &s[0], len + 1, &len);
  if (s.find('\0') != std::string::npos)
    ThrowType(env, name + " must not contain NUL characters");
  return s;
}

std::string StringArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return StringValue(info.Env(), info[i], name);
}

std::vector<std::string> StringArrayArg(const Napi::CallbackInfo& info, size_t i,
                                        const char* name) {
  Napi::Env env = info.Env();
  if (!info[i].IsArray()) ThrowType(env, std::string(name) + " must be an array of strings");
  Napi::Array a = info[i].As<Napi::Array>();
  std::vector<std::string> out;
  out.reserve(a.Length());
  for (uint32_t k = 0; k < a.Length(); k++)
    out.push_back(StringValue(env, a.Get(k), std::string(name) + "[" + std::to_string(k) + "]"));
  return out;
}

bool BoolValue(Napi::Env env, Napi::Value v, const std::string& name) {
  if (!v.IsBoolean()) ThrowType(env, name + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

Napi::Object ObjectArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsObject() || info[i].IsArray() || info[i].IsFunction())
    ThrowType(info.Env(), std::string(name) + " must be an object");
  return info[i].As<Napi::Object>();
}

Napi::Function FunctionArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsFunction()) ThrowType(info.Env(), std::string(name) + " must be a function");
  return info[i].As<Napi::Function>();
}

short LockTypeArg(const Napi::CallbackInfo& info, size_t i) {
  if (info[i].IsString()) {
    std::string t = info[i].As<Napi::String>().Utf8Value();
    if (t == "read") return F_RDLCK;
    if (t == "write") return F_WRLCK;
  }
  ThrowType(info.Env(), "type must be 'read' or 'write'");
}

int SignalValue(Napi::Env env, Napi::Value v, const std::string& name, int min) {
  int sig = static_cast<int>(ToIntOrThrow(env, v, name, min, SIGRTMAX));
  // glibc reserves 32 and 33 for itself; sigaddset rejects them.
  sigset_t probe;
  sigemptyset(&probe);
  if (sig != 0 && sigaddset(&probe, sig) < 0)
    ThrowRange(env, name + " " + std::to_string(sig) + " is not a usable signal");
  return sig;
}

// ---- record locks -----------------------------------------------------------

struct flock MakeFlock(short type, off_t start, off_t len) {
  struct flock fl;
  memset(&fl, 0, sizeof fl);  // OFD commands require l_pid == 0
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = start;
  fl.l_len = len;
  return fl;
}

// Ofd selects F_OFD_* (owned by the open file description) over classic
// F_* locks (owned by the process; any close() of the file drops them).
template <bool Ofd>
void SetLock(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  short type = LockTypeArg(info, 1);
  struct flock fl = MakeFlock(type, OffsetArg(info, 2, "start"), OffsetArg(info, 3, "len"));
  if (fcntl(fd, Ofd ? F_OFD_SETLK : F_SETLK, &fl) < 0)
    throw SysError(info.Env(), errno, Ofd ? "fcntl(F_OFD_SETLK)" : "fcntl(F_SETLK)");
}

template <bool Ofd>
void Unlock(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  struct flock fl = MakeFlock(F_UNLCK, OffsetArg(info, 1, "start"), OffsetArg(info, 2, "len"));
  if (fcntl(fd, Ofd ? F_OFD_SETLK : F_SETLK, &fl) < 0)
    throw SysError(info.Env(), errno, Ofd ? "fcntl(F_OFD_SETLK)" : "fcntl(F_SETLK)");
}

template <bool Ofd>
Napi::Value GetLock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  short type = LockTypeArg(info, 1);
  struct flock fl = MakeFlock(type, OffsetArg(info, 2, "start"), OffsetArg(info, 3, "len"));
  if (fcntl(fd, Ofd ? F_OFD_GETLK : F_GETLK, &fl) < 0)
    throw SysError(env, errno, Ofd ? "fcntl(F_OFD_GETLK)" : "fcntl(F_GETLK)");
  if (fl.l_type == F_UNLCK) return env.Null();
  Napi::Object r = Napi::Object::New(env);
  r.Set("type", fl.l_type == F_RDLCK ? "read" : "write");
  r.Set("start", static_cast<double>(fl.l_start));
  r.Set("len", static_cast<double>(fl.l_len));
  r.Set("pid", static_cast<double>(fl.l_pid));  // -1 when the holder is an OFD lock
  return r;
}

// ---- fds and sockets --------------------------------------------------------

Napi::Value GetCloexec(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  int flags = fcntl(fd, F_GETFD);
  if (flags < 0) throw SysError(info.Env(), errno, "fcntl(F_GETFD)");
  return Napi::Boolean::New(info.Env(), (flags & FD_CLOEXEC) != 0);
}

void SetCloexec(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  bool on = BoolValue(info.Env(), info[1], "on");
  int flags = fcntl(fd, F_GETFD);
  if (flags < 0) throw SysError(info.Env(), errno, "fcntl(F_GETFD)");
  int want = on ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC);
  if (want != flags && fcntl(fd, F_SETFD, want) < 0)
    throw SysError(info.Env(), errno, "fcntl(F_SETFD)");
}

// fdInfo's work for one fd: [dev, ino, mode] into out[0..2] (mode = -errno
// when fstat fails), then FD_CLOEXEC as asked (-1 leave, 0 clear, 1 set).
void FdOne(int fd, int cloexec, double* out) {
  struct stat st;
  if (fstat(fd, &st) < 0) {
    out[0] = 0;
    out[1] = 0;
    out[2] = -errno;
    return;
  }
  out[0] = static_cast<double>(st.st_dev);
  out[1] = static_cast<double>(st.st_ino);
  out[2] = st.st_mode;
  // FD_CLOEXEC is the only fd flag: set the word directly, no F_GETFD.
  if (cloexec >= 0) fcntl(fd, F_SETFD, cloexec ? FD_CLOEXEC : 0);
}


#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

// FD_CLOEXEC on for every fd of `fds`: one close_range(CLOSE_RANGE_CLOEXEC)
// per run of consecutive fds (Linux 5.11) instead of one F_SETFD per fd. A
// re-exec's lease fds are mostly consecutive (they are named as ranges:
// src/state/fdPrescan.ts), and each F_SETFD costs ~1.4 us here: ~14 ms at 10k
// leases. Per fd where close_range is refused (an older kernel).
void SetCloexecRuns(const int* fds, size_t n) {
  for (size_t i = 0; i < n;) {
    size_t j = i + 1;
    while (j < n && fds[j] == fds[j - 1] + 1 && fds[j] > 0) j++;
    if (fds[i] < 0 || j - i < 2 ||
        syscall(SYS_close_range, static_cast<unsigned>(fds[i]), static_cast<unsigned>(fds[j - 1]), CLOSE_RANGE_CLOEXEC) != 0)
      for (size_t k = i; k < j; k++) fcntl(fds[k], F_SETFD, FD_CLOEXEC);
    i = j;
  }
}

// FdOne for each of `fds`; FD_CLOEXEC set as runs (SetCloexecRuns).
void FdBatch(const int* fds, size_t n, int cloexec, double* out) {
  for (size_t i = 0; i < n; i++) FdOne(fds[i], cloexec == 1 ? -1 : cloexec, out + i * 3);
  if (cloexec == 1) SetCloexecRuns(fds, n);
}

// Re-exec works on thousands of fds at once (one per lease): one call that
// fstats each fd and optionally sets or clears FD_CLOEXEC, instead of two
// JS<->C transitions per fd. Returns [dev, ino, mode] per fd as doubles (the
// same rounding as lockFile's dev/ino); mode is -errno when fstat failed.
Napi::Value FdInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Int32Array fds = FdsArg(env, info[0]);
  int cloexec = static_cast<int>(IntArg(info, 1, "cloexec", -1, 1));  // -1 leave, 0 clear, 1 set
  size_t n = fds.ElementLength();
  Napi::Float64Array out = Napi::Float64Array::New(env, n * 3);
  FdBatch(fds.Data(), n, cloexec, out.Data());
  return out;
}

// ---- fdInfo on a background thread ------------------------------------------------
// An fstat or F_SETFD costs 1.5-3.6 us here (system calls under page-table
// isolation): at 10k leases the fdInfo of a restore was ~36 ms of the
// re-exec blackout. A re-exec'd image starts it as soon as it knows the fds
// (the old image names them: src/state/fdPrescan.ts) and parses its state
// meanwhile; fdInfoTake joins the thread and does inline the fds it did not
// have. The thread runs with every signal blocked: signals go to the main
// thread.
struct FdInfoJob {
  pthread_t thread;
  bool started = false;
  std::vector<int> fds;
  int cloexec = -1;
  std::vector<double> out;  // [dev, ino, mode | -errno] per fd
};
FdInfoJob g_fdInfoJob;

void* FdInfoJobRun(void*) {
  FdInfoJob& j = g_fdInfoJob;
  FdBatch(j.fds.data(), j.fds.size(), j.cloexec, j.out.data());
  return nullptr;
}

void FdInfoJobJoin() {
  if (!g_fdInfoJob.started) return;
  pthread_join(g_fdInfoJob.thread, nullptr);
  g_fdInfoJob.started = false;
}

// fdInfoStart(fds, cloexec): fdInfo's work for `fds`, on a thread (a
// previous job is joined and dropped first).
void FdInfoStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Int32Array fds = FdsArg(env, info[0]);
  int cloexec = static_cast<int>(IntArg(info, 1, "cloexec", -1, 1));
  FdInfoJobJoin();
  FdInfoJob& j = g_fdInfoJob;
  j.fds.assign(fds.Data(), fds.Data() + fds.ElementLength());
  j.cloexec = cloexec;
  j.out.assign(j.fds.size() * 3, 0);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int rc = pthread_create(&j.thread, nullptr, FdInfoJobRun, nullptr);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (rc != 0) {
    j.fds.clear();  // no thread: fdInfoTake does it all inline
    return;
  }
  j.started = true;
}

// fdInfoTake(fds, cloexec): joins the job, then returns fdInfo(fds, cloexec):
// the job's result for each fd it did with the same cloexec, inline for the
// others. The job is then gone.
Napi::Value FdInfoTake(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Int32Array fds = FdsArg(env, info[0]);
  int cloexec = static_cast<int>(IntArg(info, 1, "cloexec", -1, 1));
  FdInfoJobJoin();
  FdInfoJob& j = g_fdInfoJob;
  bool usable = j.cloexec == cloexec;
  int maxFd = -1;
  if (usable)
    for (int fd : j.fds) maxFd = std::max(maxFd, fd);
  std::vector<int> at(maxFd + 1, -1);  // fd -> its index in the job
  for (size_t i = 0; usable && i < j.fds.size(); i++)
    if (j.fds[i] >= 0) at[j.fds[i]] = static_cast<int>(i);
  size_t n = fds.ElementLength();
  Napi::Float64Array out = Napi::Float64Array::New(env, n * 3);
  for (size_t i = 0; i < n; i++) {
    int fd = fds[i];
    int k = fd >= 0 && fd <= maxFd ? at[fd] : -1;
    if (k < 0) {
      FdOne(fd, cloexec, out.Data() + i * 3);
    } else {
      for (int c = 0; c < 3; c++) out[i * 3 + c] = j.out[k * 3 + c];
    }
  }
  j.fds.clear();
  j.out.clear();
  j.cloexec = -1;
  return out;
}

// FD_CLOEXEC on (1) or off (0) for many fds, with no fstat: fstat of a lease
// fd on a hung NFS or FUSE mount blocks until the server answers, and a
// re-exec must not wait for a lock space that failed (src/health/).
void SetCloexecAll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Int32Array fds = FdsArg(env, info[0]);
  bool on = BoolValue(env, info[1], "on");
  for (size_t i = 0; i < fds.ElementLength(); i++) fcntl(fds[i], F_SETFD, on ? FD_CLOEXEC : 0);
}

// A close-on-exec duplicate: libuv listens on a dup of each listening socket
// so that closing libuv's handle pauses accepting while the socket (and its
// backlog) stays open on our own fd.
Napi::Value Dup(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  int d = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (d < 0) throw SysError(info.Env(), errno, "fcntl(F_DUPFD_CLOEXEC)");
  return Napi::Number::New(info.Env(), d);
}

// Node's fs.fsync is refused under the permission model, which the daemon
// runs with; the re-exec state file must still reach the disk before rename.
void Fsync(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  if (fsync(fd) < 0) throw SysError(info.Env(), errno, "fsync");
}

Napi::Value PeerCred(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
    throw SysError(env, errno, "getsockopt(SO_PEERCRED)");
  Napi::Object r = Napi::Object::New(env);
  r.Set("pid", static_cast<double>(cred.pid));
  r.Set("uid", static_cast<double>(cred.uid));
  r.Set("gid", static_cast<double>(cred.gid));
  return r;
}

// Kernels before 6.5 answer ENOPROTOOPT; callers fall back to peerCred().
Napi::Value PeerPidfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0, "sockfd");
  int pidfd = -1;
  socklen_t len = sizeof pidfd;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) < 0)
    throw SysError(env, errno, "getsockopt(SO_PEERPIDFD)");
  // The kernel creates it O_CLOEXEC; make sure, so a re-exec never leaks it.
  int flags = fcntl(pidfd, F_GETFD);
  if (flags >= 0 && !(flags & FD_CLOEXEC)) fcntl(pidfd, F_SETFD, flags | FD_CLOEXEC);
  return Napi::Number::New(env, pidfd);
}

// ---- execve -------------------------------------------------------------------

// Returns only by throwing. The caller prepares FD_CLOEXEC and the signal mask.
void Execve(const Napi::CallbackInfo& info) {
  std::string path = StringArg(info, 0, "path");
  std::vector<std::string> args = StringArrayArg(info, 1, "argv");
  std::vector<std::string> envs = StringArrayArg(info, 2, "env");
  if (args.empty()) ThrowRange(info.Env(), "argv must contain at least argv[0]");
  std::vector<char*> argv, envp;
  for (auto& s : args) argv.push_back(&s[0]);
  for (auto& s : envs) envp.push_back(&s[0]);
  argv.push_back(nullptr);
  envp.push_back(nullptr);
  execve(path.c_str(), argv.data(), envp.data());
  throw SysError(info.Env(), errno, "execve");
}

// ---- sd_notify ------------------------------------------------------------------

// NOTIFY_SOCKET ('/path' or '@abstract') as a sockaddr_un.
socklen_t NotifyAddr(Napi::Env env, const std::string& path, struct sockaddr_un* sa) {
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  bool abstract = !path.empty() && path[0] == '@';
  // A path needs room for its terminating NUL; an abstract name has none.
  size_t room = sizeof sa->sun_path - (abstract ? 0 : 1);
  if (path.empty() || path.size() > room)
    ThrowRange(env, "socketPath must be 1 to " + std::to_string(room) + " bytes");
  memcpy(sa->sun_path, path.data(), path.size());
  if (abstract) sa->sun_path[0] = '\0';
  return static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + path.size() + (abstract ? 0 : 1));
}

// One datagram, with `fds` attached as SCM_RIGHTS when there are any (the fd
// store: FDSTORE=1). Node has no AF_UNIX datagram sockets, let alone fd passing.
//
// One unbound datagram socket serves every message (the fd store sends one
// per lease and client): made on first use, close-on-exec, and made again if
// it stops being ours (a send fails as no datagram socket would). Datagrams
// the receiver has not read yet count against that one socket's send
// buffer, so it is made large; should it still be full (EAGAIN), the message
// goes through a socket of its own, as every message did before, and only
// the receiver's queue limits it.
static int notify_sock = -1;

static int NewNotifySocket() {
  int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return s;
  int size = 8 << 20;
  if (setsockopt(s, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size) < 0)  // root; else capped by wmem_max
    setsockopt(s, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
  return s;
}

void SendNotify(Napi::Env env, const std::string& path, const std::string& msg, const int* fds, size_t nfds) {
  struct sockaddr_un sa;
  socklen_t salen = NotifyAddr(env, path, &sa);
  struct iovec iov = {const_cast<char*>(msg.data()), msg.size()};
  struct msghdr mh;
  memset(&mh, 0, sizeof mh);
  mh.msg_name = &sa;
  mh.msg_namelen = salen;
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  std::vector<char> ctl;
  if (nfds > 0) {
    ctl.assign(CMSG_SPACE(sizeof(int) * nfds), 0);
    mh.msg_control = ctl.data();
    mh.msg_controllen = ctl.size();
    struct cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }
  // MSG_DONTWAIT: a stuck receiver gives EAGAIN instead of blocking the loop.
  ssize_t n = -1;
  int err = 0;
  for (int attempt = 0; attempt < 2; attempt++) {
    if (notify_sock < 0) {
      notify_sock = NewNotifySocket();
      if (notify_sock < 0) throw SysError(env, errno, "socket");
    }
    n = sendmsg(notify_sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    err = errno;
    if (n < 0 && (err == EAGAIN || err == ENOBUFS)) {
      int own = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
      if (own < 0) break;
      n = sendmsg(own, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
      err = errno;
      close(own);
      break;
    }
    if (n >= 0 || (err != EBADF && err != ENOTSOCK && err != EISCONN && err != EOPNOTSUPP && err != EPROTOTYPE && err != EDESTADDRREQ)) break;
    // The number no longer is our socket (closed and reused): forget it (never close what is not ours).
    notify_sock = -1;
  }
  // sendmsg with no fds is what sendto was: keep the name callers and tests know.
  if (n < 0) throw SysError(env, err, nfds > 0 ? "sendmsg" : "sendto");
}

void SdNotify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = StringArg(info, 0, "socketPath");
  if (!info[1].IsString()) ThrowType(env, "message must be a string");
  SendNotify(env, path, info[1].As<Napi::String>().Utf8Value(), nullptr, 0);
}

void SdNotifyFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = StringArg(info, 0, "socketPath");
  if (!info[1].IsString()) ThrowType(env, "message must be a string");
  if (!info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    ThrowType(env, "fds must be an Int32Array");
  Napi::Int32Array fds = info[2].As<Napi::Int32Array>();
  if (fds.ElementLength() == 0 || fds.ElementLength() > 253) ThrowRange(env, "fds must hold 1 to 253 descriptors");
  SendNotify(env, path, info[1].As<Napi::String>().Utf8Value(), fds.Data(), fds.ElementLength());
}

// An anonymous in-memory file (the fd store's state document), close-on-exec.
Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  std::string name = StringArg(info, 0, "name");
  int fd = static_cast<int>(syscall(SYS_memfd_create, name.c_str(), 1u /* MFD_CLOEXEC */));
  if (fd < 0) throw SysError(info.Env(), errno, "memfd_create");
  return Napi::Number::New(info.Env(), fd);
}

// ---- signals ----------------------------------------------------------------------

// An array of signal numbers as a sigset_t.
sigset_t SignalSetArg(Napi::Env env, Napi::Value v) {
  if (!v.IsArray()) ThrowType(env, "signals must be an array of numbers");
  Napi::Array a = v.As<Napi::Array>();
  sigset_t set;
  sigemptyset(&set);
  for (uint32_t k = 0; k < a.Length(); k++)
    sigaddset(&set, SignalValue(env, a.Get(k), "signals[" + std::to_string(k) + "]", 1));
  return set;
}

// pthread_sigmask on the calling (main) thread only. Threads inherit the mask
// when created: in plain Node the libuv pool threads start with SIGUSR1
// unblocked and can still take a process-directed SIGUSR1; under
// --experimental-permission every thread inherits it blocked.
void Sigmask(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int how = 0;
  std::string h = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
  if (h == "block") how = SIG_BLOCK;
  else if (h == "unblock") how = SIG_UNBLOCK;
  else ThrowType(env, "how must be 'block' or 'unblock'");
  sigset_t set = SignalSetArg(env, info[1]);
  int rc = pthread_sigmask(how, &set, nullptr);  // returns the error, not errno
  if (rc != 0) throw SysError(env, rc, "pthread_sigmask");
}

Napi::Value Sigpending(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  sigset_t set;
  if (sigpending(&set) < 0) throw SysError(env, errno, "sigpending");
  Napi::Array out = Napi::Array::New(env);
  uint32_t n = 0;
  for (int sig = 1; sig <= SIGRTMAX; sig++)
    if (sigismember(&set, sig) == 1) out.Set(n++, Napi::Number::New(env, sig));
  return out;
}

// Takes the given (blocked) signals out of the pending set without running
// anything (sigtimedwait, zero timeout) and returns those taken: a re-exec'd
// image uses it for signals sent during the exec that it has no handler for,
// so that unblocking them does not run their default action (ending the
// process, and every lock with it).
Napi::Value Sigdrain(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  sigset_t set = SignalSetArg(env, info[0]);
  Napi::Array out = Napi::Array::New(env);
  uint32_t n = 0;
  const struct timespec zero = {0, 0};
  for (;;) {
    int sig = sigtimedwait(&set, nullptr, &zero);
    if (sig > 0) {
      out.Set(n++, Napi::Number::New(env, sig));
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN) break;
    throw SysError(env, errno, "sigtimedwait");
  }
  return out;
}

// The last synchronous stretch of a re-exec (snapshot to execve) runs no
// JavaScript: a signal arriving then would be taken by libuv's handler and
// written to its pipe, which nobody reads again, and be lost at execve. For
// that stretch these handlers only note the signal; SignalCaptureEnd then
// makes it pending again on this thread (it survives execve, blocked, and the
// new image handles it) or, when the exec failed, restores libuv's handlers
// and sends it to the process again.
static volatile sig_atomic_t g_captured[65];
static struct sigaction g_capturedSaved[65];
static bool g_capturing[65];

static void RecordSignal(int sig) { g_captured[sig] = 1; }

void SignalCapture(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  sigset_t set = SignalSetArg(env, info[0]);
  for (int sig = 1; sig <= 64; sig++) {
    if (sigismember(&set, sig) != 1 || g_capturing[sig]) continue;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = RecordSignal;
    sigfillset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    g_captured[sig] = 0;
    if (sigaction(sig, &sa, &g_capturedSaved[sig]) < 0) throw SysError(env, errno, "sigaction");
    g_capturing[sig] = true;
  }
}

// mode "pending": each captured signal is made pending on the calling thread
// (which must block it); the handlers stay (execve resets them). mode
// "raise": the saved handlers come back, then each captured signal is sent
// to the process. Returns the signals captured.
Napi::Value SignalCaptureEnd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string mode = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
  if (mode != "pending" && mode != "raise") ThrowType(env, "mode must be 'pending' or 'raise'");
  Napi::Array out = Napi::Array::New(env);
  uint32_t n = 0;
  for (int sig = 1; sig <= 64; sig++) {
    if (!g_capturing[sig]) continue;
    if (mode == "raise") {
      sigaction(sig, &g_capturedSaved[sig], nullptr);
      g_capturing[sig] = false;
    }
    if (!g_captured[sig]) continue;
    g_captured[sig] = 0;
    out.Set(n++, Napi::Number::New(env, sig));
    if (mode == "pending") syscall(SYS_tgkill, getpid(), static_cast<pid_t>(syscall(SYS_gettid)), sig);
    else kill(getpid(), sig);
  }
  return out;
}

// Ends the signal hold of relockd_exec_hold.so (native/exec_hold.c) when the
// re-exec preloaded it; false when it is not loaded.
Napi::Value ExecHoldRelease(const Napi::CallbackInfo& info) {
  auto release = reinterpret_cast<void (*)()>(dlsym(RTLD_DEFAULT, "relockd_exec_hold_release"));
  if (release) release();
  return Napi::Boolean::New(info.Env(), release != nullptr);
}

// ---- pidfds ---------------------------------------------------------------------

Napi::Value PidfdOpen(const Napi::CallbackInfo& info) {
  int pid = static_cast<int>(IntArg(info, 0, "pid", 1, INT_MAX));
  long fd = syscall(SYS_pidfd_open, pid, 0);  // always O_CLOEXEC
  if (fd < 0) throw SysError(info.Env(), errno, "pidfd_open");
  return Napi::Number::New(info.Env(), static_cast<double>(fd));
}

// A copy of another process's fd (relockctl takeover asks a copy of
// virtlockd's client sockets who the peer is: SO_PEERCRED). Always O_CLOEXEC.
Napi::Value PidfdGetfd(const Napi::CallbackInfo& info) {
  int pidfd = FdArg(info, 0, "pidfd");
  int target = static_cast<int>(IntArg(info, 1, "targetfd", 0, INT_MAX));
  long fd = syscall(SYS_pidfd_getfd, pidfd, target, 0);
  if (fd < 0) throw SysError(info.Env(), errno, "pidfd_getfd");
  return Napi::Number::New(info.Env(), static_cast<double>(fd));
}

void PidfdSendSignal(const Napi::CallbackInfo& info) {
  int pidfd = FdArg(info, 0, "pidfd");
  int sig = SignalValue(info.Env(), info[1], "sig", 0);  // 0 probes liveness
  if (syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0) < 0)
    throw SysError(info.Env(), errno, "pidfd_send_signal");
}

// Whether the process has exited (the pidfd is readable), without waiting.
Napi::Value PidfdExited(const Napi::CallbackInfo& info) {
  struct pollfd p = {FdArg(info, 0, "pidfd"), POLLIN, 0};
  int n = poll(&p, 1, 0);
  if (n < 0) throw SysError(info.Env(), errno, "poll");
  if (n > 0 && (p.revents & POLLNVAL)) throw SysError(info.Env(), EBADF, "poll");
  return Napi::Boolean::New(info.Env(), n > 0);
}

// Reaps an exited child that no ChildProcess object knows (the action runner
// a re-exec'd image inherited from the old image: same pid, so still our
// child, but libuv only waits for children it spawned itself). waitpid(pid,
// WNOHANG): the decoded status, or null while it is still running. Throws
// ECHILD when `pid` is not our child.
Napi::Value ReapChild(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t pid = static_cast<pid_t>(IntArg(info, 0, "pid", 1, INT_MAX));
  int st = 0;
  pid_t r;
  do r = waitpid(pid, &st, WNOHANG);
  while (r < 0 && errno == EINTR);
  if (r < 0) throw SysError(env, errno, "waitpid");
  if (r == 0) return env.Null();
  Napi::Object o = Napi::Object::New(env);
  if (WIFEXITED(st)) {
    o.Set("code", WEXITSTATUS(st));
  } else if (WIFSIGNALED(st)) {
    o.Set("signal", WTERMSIG(st));
    o.Set("coreDumped", WCOREDUMP(st) != 0);
  }
  o.Set("status", st);
  return o;
}

// How a process ended, from its pidfd (PIDFD_INFO_EXIT). The kernel records
// it when the process is reaped by its parent, so it may not be there yet:
// then null, and the caller asks again later. Kernels without the ioctl (or
// without PIDFD_INFO_EXIT, which answer ESRCH for a reaped process) throw.
Napi::Value PidfdExitInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pidfd = FdArg(info, 0, "pidfd");
  RelockdPidfdInfo pi;
  memset(&pi, 0, sizeof pi);
  pi.mask = kPidfdInfoExit;
  if (ioctl(pidfd, kPidfdGetInfo, &pi) < 0) throw SysError(env, errno, "ioctl(PIDFD_GET_INFO)");
  if (!(pi.mask & kPidfdInfoExit)) return env.Null();
  Napi::Object r = Napi::Object::New(env);
  int st = pi.exit_code;
  if (WIFEXITED(st)) {
    r.Set("code", WEXITSTATUS(st));
  } else if (WIFSIGNALED(st)) {
    r.Set("signal", WTERMSIG(st));
    r.Set("coreDumped", WCOREDUMP(st) != 0);
  }
  r.Set("status", st);
  return r;
}

// A uv_poll_t on the main loop for fd, its data set; throws (nothing left
// allocated) when libuv refuses the fd.
uv_poll_t* NewPoll(Napi::Env env, int fd, void* data) {
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || !loop) throw Napi::Error::New(env, "no libuv loop");
  auto* poll = new uv_poll_t;
  int rc = uv_poll_init(loop, poll, fd);
  if (rc < 0) {
    delete poll;
    throw SysError(env, -rc, "uv_poll_init");
  }
  poll->data = data;
  return poll;
}

// A one-shot wait for a pidfd to become readable, which the kernel does when
// the process exits (before it is reaped): a uv_poll_t on the main loop, so
// no thread and no timer. The callback runs once, with null or an Error;
// the poll is stopped before it runs. close() stops it early (re-exec
// freeze, cancellation); the pidfd itself stays open (the caller owns it).
// While armed the handle keeps the event loop alive, like a child process;
// unref() lifts that.
class PidfdWatch : public Napi::ObjectWrap<PidfdWatch> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "PidfdWatch",
                       {InstanceMethod("close", &PidfdWatch::Close),
                        InstanceMethod("ref", &PidfdWatch::RefLoop),
                        InstanceMethod("unref", &PidfdWatch::UnrefLoop)});
  }

  explicit PidfdWatch(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<PidfdWatch>(info), ctx_(info.Env(), "relockd.pidfdWatch") {
    Napi::Env env = info.Env();
    int fd = FdArg(info, 0, "pidfd");
    cb_ = Napi::Persistent(FunctionArg(info, 1, "cb"));
    poll_ = NewPoll(env, fd, this);
    int rc = uv_poll_start(poll_, UV_READABLE, OnPoll);
    if (rc < 0) {
      Stop();
      throw SysError(env, -rc, "uv_poll_start");
    }
    Ref();  // the JS object lives while armed, whoever holds it
    armed_ = true;
  }

  ~PidfdWatch() override { Stop(); }

 private:
  static void OnPoll(uv_poll_t* h, int status, int /*events*/) {
    auto* self = static_cast<PidfdWatch*>(h->data);
    if (!self) return;
    self->Stop();
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    napi_value arg = status < 0 ? SysError(env, -status, "uv_poll").Value() : env.Null();
    try {
      self->cb_.MakeCallback(env.Global(), {arg}, self->ctx_);
    } catch (const Napi::Error& e) {
      // A C++ exception must not unwind through libuv (that would abort the
      // daemon and drop every lock): hand it to process 'uncaughtException'.
      napi_fatal_exception(env, e.Value());
    }
    self->Disarm();
  }

  void Stop() {
    if (!poll_) return;
    poll_->data = nullptr;
    uv_poll_stop(poll_);
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* hd) { delete reinterpret_cast<uv_poll_t*>(hd); });
    poll_ = nullptr;
  }

  void Disarm() {
    if (!armed_) return;
    armed_ = false;
    Unref();
  }

  void Close(const Napi::CallbackInfo&) {
    Stop();
    Disarm();
  }

  void RefLoop(const Napi::CallbackInfo&) {
    if (poll_) uv_ref(reinterpret_cast<uv_handle_t*>(poll_));
  }

  void UnrefLoop(const Napi::CallbackInfo&) {
    if (poll_) uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
  }

  uv_poll_t* poll_ = nullptr;
  bool armed_ = false;
  Napi::FunctionReference cb_;
  Napi::AsyncContext ctx_;
};

// ---- client reads that leave the kernel only once recorded --------------------------

// recv(MSG_PEEK|MSG_DONTWAIT) of up to `max` bytes: the bytes, an empty
// buffer when none are queued, or null at end of stream.
static Napi::Value PeekInto(Napi::Env env, int fd, size_t max) {
  static thread_local std::vector<char> buf;
  if (buf.size() < max) buf.resize(max);
  ssize_t n;
  do n = recv(fd, buf.data(), max, MSG_PEEK | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Buffer<char>::New(env, 0);
    throw SysError(env, errno, "recv(MSG_PEEK)");
  }
  if (n == 0) return env.Null();
  return Napi::Buffer<char>::Copy(env, buf.data(), static_cast<size_t>(n));
}

// Takes `n` bytes that a peek already showed out of the receive queue.
static size_t DiscardBytes(Napi::Env env, int fd, size_t n) {
  static thread_local std::vector<char> sink(65536);
  size_t done = 0;
  while (done < n) {
    size_t want = n - done < sink.size() ? n - done : sink.size();
    ssize_t r = recv(fd, sink.data(), want, MSG_DONTWAIT);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw SysError(env, errno, "recv");
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  return done;
}

Napi::Value RecvPeek(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  uint32_t max = info[1].IsNumber() ? info[1].As<Napi::Number>().Uint32Value() : 65536;
  if (max == 0 || max > (1u << 20)) throw Napi::RangeError::New(info.Env(), "max: 1 .. 1048576");
  return PeekInto(info.Env(), fd, max);
}

Napi::Value RecvDiscard(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  if (!info[1].IsNumber()) throw Napi::TypeError::New(info.Env(), "n: a number");
  return Napi::Number::New(info.Env(), static_cast<double>(DiscardBytes(info.Env(), fd, info[1].As<Napi::Number>().Uint32Value())));
}

// Watches a connected stream socket and hands the queued bytes to JS without
// taking them out of the kernel (MSG_PEEK); JS records them, then consume()s
// them. A SIGKILL between the two leaves the bytes both in the record and in
// the socket, which the restart can tell apart; the other order would lose
// them. The poll is on a close-on-exec dup, so Node's own handle for the
// socket (used for writes) is untouched. Level-triggered: a callback that
// neither consumes nor pauses is called again.
class PeekReader : public Napi::ObjectWrap<PeekReader> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "PeekReader",
                       {InstanceMethod("consume", &PeekReader::Consume),
                        InstanceMethod("pause", &PeekReader::Pause),
                        InstanceMethod("resume", &PeekReader::Resume),
                        InstanceMethod("close", &PeekReader::Close)});
  }

  explicit PeekReader(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<PeekReader>(info), ctx_(info.Env(), "relockd.peekReader") {
    Napi::Env env = info.Env();
    int fd = FdArg(info, 0, "fd");
    cb_ = Napi::Persistent(FunctionArg(info, 1, "cb"));
    fd_ = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (fd_ < 0) throw SysError(env, errno, "fcntl(F_DUPFD_CLOEXEC)");
    try {
      poll_ = NewPoll(env, fd_, this);
    } catch (...) {
      ::close(fd_);
      fd_ = -1;
      throw;
    }
    Ref();  // alive while open, whoever holds the JS object
    open_ = true;
  }

  ~PeekReader() override { ClosePoll(); }

 private:
  static void OnPoll(uv_poll_t* h, int status, int /*events*/) {
    auto* self = static_cast<PeekReader*>(h->data);
    if (!self) return;
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    napi_value err = env.Null();
    napi_value bytes = env.Undefined();
    if (status < 0) {
      err = SysError(env, -status, "uv_poll").Value();
    } else {
      try {
        Napi::Value v = PeekInto(env, self->fd_, 65536);
        if (v.IsBuffer() && v.As<Napi::Buffer<char>>().Length() == 0) return;  // spurious wake-up
        bytes = v;
      } catch (const Napi::Error& e) {
        err = e.Value();
      }
    }
    // End of stream or an error: nothing more will come, stop watching.
    if (status < 0 || !Napi::Value(env, bytes).IsBuffer()) self->StopPoll();
    try {
      self->cb_.MakeCallback(env.Global(), {err, bytes}, self->ctx_);
    } catch (const Napi::Error& e) {
      napi_fatal_exception(env, e.Value());  // never unwind through libuv
    }
  }

  Napi::Value Consume(const Napi::CallbackInfo& info) {
    if (fd_ < 0) throw Napi::Error::New(info.Env(), "peek reader closed");
    if (!info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "n: a number");
    return Napi::Number::New(info.Env(), static_cast<double>(DiscardBytes(info.Env(), fd_, info[0].As<Napi::Number>().Uint32Value())));
  }

  void StopPoll() {
    if (poll_ && polling_) uv_poll_stop(poll_);  // also EPOLL_CTL_DEL while the dup is open
    polling_ = false;
  }

  void Pause(const Napi::CallbackInfo&) { StopPoll(); }

  void Resume(const Napi::CallbackInfo& info) {
    if (!poll_ || polling_) return;
    int rc = uv_poll_start(poll_, UV_READABLE | UV_DISCONNECT, OnPoll);
    if (rc < 0) throw SysError(info.Env(), -rc, "uv_poll_start");
    polling_ = true;
  }

  // The dup is closed only once libuv has let go of the handle.
  void ClosePoll() {
    StopPoll();
    if (!poll_) return;
    poll_->data = reinterpret_cast<void*>(static_cast<intptr_t>(fd_));
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* hd) {
      ::close(static_cast<int>(reinterpret_cast<intptr_t>(hd->data)));
      delete reinterpret_cast<uv_poll_t*>(hd);
    });
    poll_ = nullptr;
    fd_ = -1;
  }

  void Close(const Napi::CallbackInfo&) {
    ClosePoll();
    if (open_) {
      open_ = false;
      Unref();
    }
  }

  uv_poll_t* poll_ = nullptr;
  int fd_ = -1;
  bool polling_ = false;
  bool open_ = false;
  Napi::FunctionReference cb_;
  Napi::AsyncContext ctx_;
};

// ---- storage jobs: shared pieces ------------------------------------------------------

// A storage call interrupted by a signal before it did anything is simply
// made again (libuv installs its handlers with SA_RESTART, but a handler
// without it, or a pool thread's own signal, would otherwise turn a slow NFS
// call into a spurious failure). Never for close(): on Linux the fd is gone
// even when close reports EINTR.
template <typename Call>
auto RetryEintr(Call call) -> decltype(call()) {
  decltype(call()) r;
  do {
    r = call();
  } while (r < 0 && errno == EINTR);
  return r;
}

// One AsyncWorker for every storage job (LockJob, ReleaseJob): Run() on a
// pool thread, then cb(err) or cb(null, result) on the loop. A job provides
// Run(), Error() (the failure to report, or nullptr) and Result(env).
template <typename Job>
class JobWorker : public Napi::AsyncWorker {
 public:
  JobWorker(Napi::Function cb, const char* name, Job job) : Napi::AsyncWorker(cb, name), job_(std::move(job)) {}

 protected:
  void Execute() override { job_.Run(); }

  void OnOK() override {
    Napi::Env env = Env();
    if (const Failure* f = job_.Error()) {
      Callback().Call({FailureValue(env, *f)});
      return;
    }
    Callback().Call({env.Null(), job_.Result(env)});
  }

 private:
  Job job_;
};

// A job on the pool (callback at argument cbIndex). The inline variants
// (lockFileInline, releaseFileInline: local storage that cannot hang) run
// the same job on the calling thread and return plain numbers.
template <typename Job>
void QueueJob(const Napi::CallbackInfo& info, size_t cbIndex, const char* name, Job job) {
  Napi::Function cb = FunctionArg(info, cbIndex, "cb");
  (new JobWorker<Job>(cb, name, std::move(job)))->Queue();
}

// ---- acquire -----------------------------------------------------------------------

// NFS: make the client look the directory up again (drops stale names).
void RefreshDir(const std::string& dir) {
  struct statx sx;
  RetryEintr([&] { return statx(AT_FDCWD, dir.c_str(), AT_STATX_FORCE_SYNC, STATX_INO, &sx); });
}

std::string DirName(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Between retries of the acquire loop: the first few back to back, then a
// growing pause (1, 2, 4 ... 64 ms). A handover on NFS settles within a few
// round trips; the pause keeps a pool thread from spinning meanwhile. Total
// bound: kMaxLockAttempts attempts, under ~3 s.
void RetryPause(int attempt) {
  if (attempt < 3) return;
  int shift = attempt - 3 < 6 ? attempt - 3 : 6;
  struct timespec ts = {0, (1L << shift) * 1000000L};
  nanosleep(&ts, nullptr);
}

// virtlockd's acquire sequence: open (optionally creating), OFD-lock byte 0,
// and when creating make sure the path still names the file we locked: a
// releasing holder may have unlinked it between our open and our lock.
// Runs on a pool thread (lockFile) or, for local filesystems, inline
// (lockFileSync): the same code either way.
//
// Every failure that only means "the name moved under us" (ESTALE from any
// step, the path naming another file, the locked file unlinked) is retried
// after revalidating the name; only real errors and EAGAIN (busy) come back.
// So an ACQUIRE of a free lease is granted and a held one is busy, however
// another host's release interleaves.
struct LockJob {
  std::string path;
  bool shared = false, create = false;
  // Host-local storage (the inline path: ext4, xfs, tmpfs, ...): a path's
  // lookup is authoritative, so the NFS revalidation below is not needed,
  // and an autocreated lease file usually does not exist yet (it is
  // unlinked on release there), so creating is tried first.
  bool local = false;
  Failure fail;
  int fd = -1;
  dev_t dev = 0;
  ino_t ino = 0;
  bool created = false;
  int attempts = 0;
  const char* lastRetry = nullptr;

  void Run() {
    for (int attempt = 0; attempt < kMaxLockAttempts; attempt++) {
      attempts = attempt + 1;
      if (attempt > 0) RetryPause(attempt);
      created = false;
      int f;
      if (local && create) {
        f = RetryEintr([&] { return open(path.c_str(), O_RDWR | O_CLOEXEC | O_CREAT | O_EXCL, 0600); });
        if (f >= 0) {
          created = true;
        } else if (errno == EEXIST) {
          // Exists (or a dangling symlink: plain O_CREAT as virtlockd).
          f = RetryEintr([&] { return open(path.c_str(), O_RDWR | O_CLOEXEC | O_CREAT, 0600); });
        }
      } else {
        f = RetryEintr([&] { return open(path.c_str(), O_RDWR | O_CLOEXEC); });
      }
      if (f < 0 && errno == ENOENT && create && !local) {
        // O_EXCL tells us whether we created it.
        f = RetryEintr([&] { return open(path.c_str(), O_RDWR | O_CLOEXEC | O_CREAT | O_EXCL, 0600); });
        if (f >= 0) {
          created = true;
        } else if (errno == EEXIST) {
          // Lost a creation race, or a dangling symlink: plain O_CREAT as virtlockd.
          f = RetryEintr([&] { return open(path.c_str(), O_RDWR | O_CLOEXEC | O_CREAT, 0600); });
        }
      }
      if (f < 0 && errno == ESTALE) {  // NFS: a stale cached name: look it up again
        Retry(-1, "open: ESTALE");
        continue;
      }
      if (f < 0) return Fail(-1, errno, "open", "open");

      struct flock fl = MakeFlock(shared ? F_RDLCK : F_WRLCK, 0, 1);
      if (RetryEintr([&] { return fcntl(f, F_OFD_SETLK, &fl); }) < 0) {
        if (errno == ESTALE) {  // NFS: the file went away under us
          Retry(f, "lock: ESTALE");
          continue;
        }
        return Fail(f, errno, "fcntl(F_OFD_SETLK)", "lock");
      }

      struct stat fst;
      if (RetryEintr([&] { return fstat(f, &fst); }) < 0) {
        if (errno == ESTALE) {
          Retry(f, "fstat: ESTALE");
          continue;
        }
        return Fail(f, errno, "fstat", "stat");
      }
      if (create) {
        int verdict = local ? CheckStillNamedLocal(f, fst) : CheckStillNamed(f);
        if (verdict < 0) return;  // fail is set, f closed
        if (verdict == 0) continue;  // retry, f closed
      }
      fd = f;
      dev = fst.st_dev;
      ino = fst.st_ino;
      return;
    }
    fail = {ELOOP, "stat", "stat", "the lease file kept being replaced while locking it"};
  }

  // The lock must be on the file the path names *now*: a releasing holder
  // (virtlockd, on any host) unlinks the lease file while still locked, then
  // unlocks. On NFS a plain stat(path) can be answered from a cached name:
  // directory change attributes come from timestamps with coarse granularity,
  // so the client may never notice the rename and keeps handing out the
  // old file (the cause of both the double grant and the ELOOP seen in the
  // UML lab, test/nfs/). An O_CREAT|O_EXCL open of the path is the one call
  // that always makes the client look the name up on the server (LOOKUP_EXCL
  // forces revalidation, NFSv3 and v4): EEXIST means the name exists and its
  // dentry is fresh; success means the name was gone (we locked an orphan).
  // Then the server's attributes (FORCE_SYNC) of the fd and of the path must
  // name the same inode, still linked. Returns 1 ok, 0 retry, -1 failed.
  int CheckStillNamed(int f) {
    int probe = RetryEintr([&] { return open(path.c_str(), O_RDWR | O_CLOEXEC | O_CREAT | O_EXCL, 0600); });
    if (probe >= 0) {
      close(probe);  // the name was free: what we locked is unlinked
      Retry(f, "check: the locked file was unlinked");
      return 0;
    }
    if (errno == ESTALE || errno == ENOENT) {
      Retry(f, "check: ESTALE");
      return 0;
    }
    if (errno != EEXIST) {
      Fail(f, errno, "open", "stat");
      return -1;
    }
    struct statx fsx, psx;
    if (RetryEintr([&] { return statx(f, "", AT_EMPTY_PATH | AT_STATX_FORCE_SYNC, STATX_BASIC_STATS, &fsx); }) < 0) {
      if (errno == ESTALE) {
        Retry(f, "check: fd ESTALE");
        return 0;
      }
      Fail(f, errno, "statx", "stat");
      return -1;
    }
    if (RetryEintr([&] { return statx(AT_FDCWD, path.c_str(), AT_STATX_FORCE_SYNC, STATX_BASIC_STATS, &psx); }) < 0) {
      int err = errno;
      if (err != ENOENT && err != ESTALE) {
        Fail(f, err, "statx", "stat");
        return -1;
      }
      Retry(f, "check: path vanished");
      return 0;
    }
    if (fsx.stx_nlink == 0 || fsx.stx_ino != psx.stx_ino || fsx.stx_dev_major != psx.stx_dev_major ||
        fsx.stx_dev_minor != psx.stx_dev_minor) {
      Retry(f, fsx.stx_nlink == 0 ? "check: the locked file was unlinked" : "check: the path names another file");
      return 0;
    }
    return 1;
  }

  // The same check on host-local storage: the locked file must still be
  // linked (nlink from the fstat just made) and be what the path names.
  // Returns 1 ok, 0 retry, -1 failed.
  int CheckStillNamedLocal(int f, const struct stat& fst) {
    if (fst.st_nlink == 0) {
      RetryLocal(f, "check: the locked file was unlinked");
      return 0;
    }
    struct stat pst;
    if (RetryEintr([&] { return stat(path.c_str(), &pst); }) < 0) {
      int err = errno;
      if (err != ENOENT) {
        Fail(f, err, "stat", "stat");
        return -1;
      }
      RetryLocal(f, "check: path vanished");
      return 0;
    }
    if (pst.st_dev != fst.st_dev || pst.st_ino != fst.st_ino) {
      RetryLocal(f, "check: the path names another file");
      return 0;
    }
    return 1;
  }

  const Failure* Error() const { return fail.err ? &fail : nullptr; }

  Napi::Object Result(Napi::Env env) const {
    Napi::Object r = Napi::Object::New(env);
    r.Set("fd", fd);
    r.Set("dev", static_cast<double>(dev));  // same (lossy) numbers as fs.Stats
    r.Set("ino", static_cast<double>(ino));
    r.Set("created", created);
    r.Set("attempts", attempts);
    if (lastRetry) r.Set("retried", lastRetry);
    return r;
  }

 private:
  void Fail(int f, int err, const char* syscall, const char* stage) {
    if (f >= 0) close(f);
    fail = {err, syscall, stage, nullptr};
  }

  // Drops this attempt's fd (it may hold a lock on an orphan) and makes the
  // client revalidate the directory before the next attempt.
  void Retry(int f, const char* why) {
    if (f >= 0) close(f);
    lastRetry = why;
    RefreshDir(DirName(path));
  }

  // Local storage has no name cache to refresh.
  void RetryLocal(int f, const char* why) {
    if (f >= 0) close(f);
    lastRetry = why;
  }
};

LockJob LockJobArgs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  LockJob job;
  job.path = BytesValue(env, info[0], "path");
  if (job.path.empty()) ThrowRange(env, "path must not be empty");
  Napi::Object opts = ObjectArg(info, 1, "opts");
  job.shared = BoolValue(env, opts.Get("shared"), "opts.shared");
  job.create = BoolValue(env, opts.Get("create"), "opts.create");
  return job;
}

// lockFileInline(path, shared, create, out: Float64Array(5)): the acquire on
// the calling thread, for host-local storage only (the inline path). The
// result goes into `out` (fd, dev, ino, created, attempts) instead of a new
// object: building one with named properties cost more than the open.
// Returns the last retry's reason, or undefined; failures throw as lockFile's.
Napi::Value LockFileInline(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  LockJob job;
  job.path = BytesValue(env, info[0], "path");
  if (job.path.empty()) ThrowRange(env, "path must not be empty");
  job.shared = BoolValue(env, info[1], "shared");
  job.create = BoolValue(env, info[2], "create");
  job.local = true;
  if (!info[3].IsTypedArray() || info[3].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
      info[3].As<Napi::Float64Array>().ElementLength() < 5)
    ThrowType(env, "out must be a Float64Array of 5");
  job.Run();
  if (const Failure* f = job.Error()) throw SysError(env, f->err, f->syscall, f->stage, f->detail);
  double* out = info[3].As<Napi::Float64Array>().Data();
  out[0] = job.fd;
  out[1] = static_cast<double>(job.dev);
  out[2] = static_cast<double>(job.ino);
  out[3] = job.created ? 1 : 0;
  out[4] = job.attempts;
  if (job.lastRetry) return Napi::String::New(env, job.lastRetry);
  return env.Undefined();
}

void LockFile(const Napi::CallbackInfo& info) { QueueJob(info, 2, "relockd.lockFile", LockJobArgs(info)); }

// ---- release -----------------------------------------------------------------------

// virtlockd's release: optionally delete the lock file, but only if no one
// else holds it (upgrade to write succeeds) and the path still names our
// file; then close, which drops the OFD lock. The close always happens.
struct ReleaseJob {
  int fd = -1;
  bool unlink = false;
  std::string path;
  bool onlyIfExclusive = false;
  bool classic = false;
  bool unlinked = false;
  int unlinkErr = 0;
  Failure closeFail;
  // The fd's identity when the caller knows it (the inline path): no fstat.
  bool haveId = false;
  dev_t dev = 0;
  ino_t ino = 0;

  void Run() {
    if (unlink) MaybeUnlink();
    // Unlock first, then close: the kernel drops an OFD lock only at the
    // final fput, after close's flush, and on FUSE (or NFS) that flush can
    // hang for as long as the server does, keeping a lock nobody holds.
    // A failed unlock changes nothing: close still drops the lock.
    struct flock fl = MakeFlock(F_UNLCK, 0, 1);
    RetryEintr([&] { return fcntl(fd, classic ? F_SETLK : F_OFD_SETLK, &fl); });
    if (close(fd) < 0) closeFail = {errno, "close", "close", nullptr};
  }

  // EBADF: nothing was ours to close, a caller bug. Other close errors
  // (EIO, EINTR) still release the fd on Linux, so they are only reported.
  const Failure* Error() const { return closeFail.err == EBADF ? &closeFail : nullptr; }

  Napi::Object Result(Napi::Env env) const {
    Napi::Object r = Napi::Object::New(env);
    r.Set("unlinked", unlinked);
    // Only the errno names: the caller logs them; the release itself went through.
    if (unlinkErr) r.Set("unlinkError", ErrnoName(unlinkErr));
    if (closeFail.err) r.Set("closeError", ErrnoName(closeFail.err));
    return r;
  }

 private:
  void MaybeUnlink() {
    if (onlyIfExclusive) {
      // Fails while anyone else (even another fd of ours) still holds byte 0.
      // A classic lock (taken over from virtlockd) is upgraded as a classic
      // one: an OFD upgrade would conflict with our own classic read lock.
      struct flock fl = MakeFlock(F_WRLCK, 0, 1);
      if (RetryEintr([&] { return fcntl(fd, classic ? F_SETLK : F_OFD_SETLK, &fl); }) < 0) {
        if (errno != EAGAIN && errno != EACCES) unlinkErr = errno;
        return;
      }
    }
    struct stat fst, pst;
    if (haveId) {
      fst.st_dev = dev;
      fst.st_ino = ino;
    } else if (RetryEintr([&] { return fstat(fd, &fst); }) < 0) {
      unlinkErr = errno;
      return;
    }
    if (RetryEintr([&] { return stat(path.c_str(), &pst); }) < 0) {
      if (errno != ENOENT) unlinkErr = errno;
      return;
    }
    if (pst.st_dev != fst.st_dev || pst.st_ino != fst.st_ino) return;  // not ours any more
    if (RetryEintr([&] { return ::unlink(path.c_str()); }) == 0) {
      unlinked = true;
    } else if (errno != ENOENT) {
      unlinkErr = errno;
    }
  }
};

ReleaseJob ReleaseJobArgs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ReleaseJob job;
  job.fd = FdArg(info, 0);
  Napi::Object opts = ObjectArg(info, 1, "opts");
  Napi::Value up = opts.Get("unlinkPath");
  job.unlink = !up.IsNull();
  job.path = job.unlink ? BytesValue(env, up, "opts.unlinkPath (or null)") : "";
  if (job.unlink && job.path.empty()) ThrowRange(env, "opts.unlinkPath must not be empty");
  job.onlyIfExclusive = BoolValue(env, opts.Get("onlyIfExclusive"), "opts.onlyIfExclusive");
  Napi::Value cv = opts.Get("classic");
  job.classic = cv.IsUndefined() ? false : BoolValue(env, cv, "opts.classic");
  return job;
}

void ReleaseFile(const Napi::CallbackInfo& info) { QueueJob(info, 2, "relockd.releaseFile", ReleaseJobArgs(info)); }

// releaseFileInline(fd, unlinkPath | null, onlyIfExclusive, classic, dev, ino):
// the release on the calling thread (host-local storage). dev/ino are the
// fd's identity as recorded at acquire (used instead of an fstat when both
// are exact doubles; else pass -1). Returns 1 (unlinked) or 0, or, only
// when something went wrong, releaseFile's result object; EBADF throws.
Napi::Value ReleaseFileInline(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ReleaseJob job;
  job.fd = FdArg(info, 0);
  job.unlink = !info[1].IsNull();
  job.path = job.unlink ? BytesValue(env, info[1], "unlinkPath (or null)") : "";
  if (job.unlink && job.path.empty()) ThrowRange(env, "unlinkPath must not be empty");
  job.onlyIfExclusive = BoolValue(env, info[2], "onlyIfExclusive");
  job.classic = BoolValue(env, info[3], "classic");
  if (info[4].IsNumber() && info[5].IsNumber()) {
    double d = info[4].As<Napi::Number>().DoubleValue();
    double i = info[5].As<Napi::Number>().DoubleValue();
    if (d >= 0 && i >= 0 && d <= kMaxSafeInteger && i <= kMaxSafeInteger) {
      job.haveId = true;
      job.dev = static_cast<dev_t>(d);
      job.ino = static_cast<ino_t>(i);
    }
  }
  job.Run();
  if (const Failure* f = job.Error()) throw SysError(env, f->err, f->syscall, f->stage, f->detail);
  if (job.unlinkErr || job.closeFail.err) return job.Result(env);
  return Napi::Number::New(env, job.unlinked ? 1 : 0);
}

// ---- storage health probe ----------------------------------------------------------------

// One probe of a lock space's storage, on the libuv pool (src/health/): a
// statx that must reach the server (FORCE_SYNC: no attribute cache), then,
// per held lease, I/O through the holder's own open file description, which
// is where an NFSv4 client reports a lost lock (EIO, Linux >= 3.12). The fds
// given are dups made by the caller on the main thread (so a concurrent
// release can never make us touch a recycled fd number); they are closed here.
constexpr int kProbeDirStatx = 1;   // statx(dir, AT_STATX_FORCE_SYNC)
constexpr int kProbeDirectRead = 2; // pread of the first block with O_DIRECT (no page cache)
constexpr int kProbeRelock = 4;     // F_OFD_SETLK again with the type we hold (a LOCK RPC on NFS)
constexpr int kProbeFstatSync = 8;  // statx(fd, FORCE_SYNC): GETATTR through the fd
constexpr int kProbeKeepFds = 16;   // the fds are the leases' own: do not close them

struct ProbeLease {
  int fd = -1;
  short lockType = 0;  // F_RDLCK / F_WRLCK, or 0: do not re-assert
  Failure fail;
  bool buffered = false;  // O_DIRECT refused (e.g. FUSE without direct I/O): plain pread
};

struct ProbeJob {
  std::string dir;
  int methods = 0;
  Failure dirFail;
  std::vector<ProbeLease> leases;

  void Run() {
    if ((methods & kProbeDirStatx) && !dir.empty()) {
      struct statx sx;
      if (statx(AT_FDCWD, dir.c_str(), AT_STATX_FORCE_SYNC, STATX_BASIC_STATS, &sx) < 0)
        dirFail = {errno, "statx", "dir", nullptr};
    }
    void* buf = nullptr;
    if (posix_memalign(&buf, 4096, 4096) != 0) buf = nullptr;
    for (auto& l : leases) {
      ProbeOne(l, buf);
      if (!(methods & kProbeKeepFds)) close(l.fd);
    }
    free(buf);
  }

  void ProbeOne(ProbeLease& l, void* buf) {
    if (methods & kProbeFstatSync) {
      struct statx sx;
      if (statx(l.fd, "", AT_EMPTY_PATH | AT_STATX_FORCE_SYNC, STATX_BASIC_STATS, &sx) < 0) {
        l.fail = {errno, "statx", "fstat", nullptr};
        return;
      }
    }
    if ((methods & kProbeRelock) && l.lockType) {
      struct flock fl = MakeFlock(l.lockType, 0, 1);
      if (fcntl(l.fd, F_OFD_SETLK, &fl) < 0) {
        l.fail = {errno, "fcntl(F_OFD_SETLK)", "relock", nullptr};
        return;
      }
    }
    if ((methods & kProbeDirectRead) && buf) {
      int flags = fcntl(l.fd, F_GETFL);
      bool direct = flags >= 0 && fcntl(l.fd, F_SETFL, flags | O_DIRECT) == 0;
      if (!direct) l.buffered = true;
      ssize_t n = pread(l.fd, buf, 4096, 0);
      int err = errno;
      if (direct) fcntl(l.fd, F_SETFL, flags);
      if (n < 0) l.fail = {err, "pread", "read", nullptr};
    }
  }

  Napi::Object Result(Napi::Env env) const {
    Napi::Object r = Napi::Object::New(env);
    if (dirFail.err) r.Set("dirError", FailureValue(env, dirFail));
    Napi::Array a = Napi::Array::New(env, leases.size());
    for (size_t i = 0; i < leases.size(); i++) {
      Napi::Object o = Napi::Object::New(env);
      if (leases[i].fail.err) o.Set("error", FailureValue(env, leases[i].fail));
      o.Set("buffered", leases[i].buffered);
      a.Set(static_cast<uint32_t>(i), o);
    }
    r.Set("leases", a);
    return r;
  }
};

class ProbeWorker : public Napi::AsyncWorker {
 public:
  ProbeWorker(Napi::Function cb, ProbeJob job) : Napi::AsyncWorker(cb, "relockd.probeStorage"), job_(std::move(job)) {}

 protected:
  void Execute() override { job_.Run(); }
  void OnOK() override { Callback().Call({Env().Null(), job_.Result(Env())}); }

 private:
  ProbeJob job_;
};

// probeStorage(dir, [{fd, lock: 'read'|'write'|null}], methods, cb(err, {dirError?, leases: [{error?, buffered}]}))
void ProbeStorage(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ProbeJob job;
  job.dir = StringArg(info, 0, "dir");
  if (!info[1].IsArray()) ThrowType(env, "leases must be an array");
  Napi::Array a = info[1].As<Napi::Array>();
  job.methods = static_cast<int>(IntArg(info, 2, "methods", 0, 31));
  Napi::Function cb = FunctionArg(info, 3, "cb");
  for (uint32_t k = 0; k < a.Length(); k++) {
    Napi::Value v = a.Get(k);
    if (!v.IsObject()) ThrowType(env, "leases[] must be objects");
    Napi::Object o = v.As<Napi::Object>();
    ProbeLease l;
    l.fd = static_cast<int>(ToIntOrThrow(env, o.Get("fd"), "leases[].fd", 0, INT_MAX));
    Napi::Value lt = o.Get("lock");
    if (lt.IsString()) {
      std::string t = lt.As<Napi::String>().Utf8Value();
      if (t == "read") l.lockType = F_RDLCK;
      else if (t == "write") l.lockType = F_WRLCK;
      else ThrowType(env, "leases[].lock must be 'read', 'write' or null");
    }
    job.leases.push_back(l);
  }
  (new ProbeWorker(cb, std::move(job)))->Queue();
}

// ---- misc -----------------------------------------------------------------------------

// The C library's text for an errno (virtlockd puts it in its error messages).
Napi::Value Strerror(const Napi::CallbackInfo& info) {
  int err = static_cast<int>(IntArg(info, 0, "errno", 0, INT_MAX));
  return Napi::String::New(info.Env(), ErrnoText(err));
}

// ---- memory ---------------------------------------------------------------------------

// Clean file pages of the loaded ELF objects (the node binary, its libraries,
// this addon) count in our RSS once touched, although they stay in the page
// cache and are shared. Start-up touches far more of node's code and
// constants than a running daemon uses. Dropping our mappings of them is what
// the kernel's reclaim may do at any time: the next access maps the page
// again from the page cache. Only pages that are still the file's own are
// dropped (pagemap "file page" bit): a private page that was written
// (relocations, breakpoints, Node's --use-largepages copy of its text) is
// anonymous memory and is kept. Read-only segments only, and under the
// loader's lock (dl_iterate_phdr), so no object is unloaded meanwhile.
struct DropState {
  int pagemap;
  uintptr_t page;
  uintptr_t vdso;
  double bytes;
  int objects;
  int failed;  // errno of a failed pread/madvise, 0 if none
};

bool HasTextRelocations(const dl_phdr_info* info) {
  for (int k = 0; k < info->dlpi_phnum; k++) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[k];
    if (ph.p_type != PT_DYNAMIC) continue;
    for (const ElfW(Dyn)* d = reinterpret_cast<const ElfW(Dyn)*>(info->dlpi_addr + ph.p_vaddr); d->d_tag != DT_NULL; d++) {
      if (d->d_tag == DT_TEXTREL) return true;
      if (d->d_tag == DT_FLAGS && (d->d_un.d_val & DF_TEXTREL)) return true;
    }
  }
  return false;
}

// Drops the runs of present file pages in [start, end).
void DropRange(DropState* st, uintptr_t start, uintptr_t end) {
  constexpr size_t kChunk = 4096;  // pagemap entries per read
  std::vector<uint64_t> entries(kChunk);
  for (uintptr_t at = start; at < end;) {
    size_t n = std::min<size_t>(kChunk, (end - at) / st->page);
    ssize_t got = pread(st->pagemap, entries.data(), n * sizeof(uint64_t), static_cast<off_t>((at / st->page) * sizeof(uint64_t)));
    if (got <= 0) {
      st->failed = got < 0 ? errno : EIO;
      return;
    }
    n = static_cast<size_t>(got) / sizeof(uint64_t);
    size_t k = 0;
    while (k < n) {
      constexpr uint64_t kPresent = 1ULL << 63, kFilePage = 1ULL << 61;
      if ((entries[k] & (kPresent | kFilePage)) != (kPresent | kFilePage)) {
        k++;
        continue;
      }
      size_t run = k;
      while (run < n && (entries[run] & (kPresent | kFilePage)) == (kPresent | kFilePage)) run++;
      void* addr = reinterpret_cast<void*>(at + k * st->page);
      if (madvise(addr, (run - k) * st->page, MADV_DONTNEED) == 0) st->bytes += static_cast<double>((run - k) * st->page);
      else st->failed = errno;
      k = run;
    }
    at += n * st->page;
  }
}

int DropObject(dl_phdr_info* info, size_t, void* data) {
  auto* st = static_cast<DropState*>(data);
  for (int k = 0; k < info->dlpi_phnum; k++) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[k];
    if (ph.p_type == PT_LOAD && ph.p_offset == 0 && info->dlpi_addr + ph.p_vaddr == st->vdso) return 0;  // the vDSO is no file
  }
  if (HasTextRelocations(info)) return 0;
  bool any = false;
  for (int k = 0; k < info->dlpi_phnum; k++) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[k];
    if (ph.p_type != PT_LOAD || (ph.p_flags & PF_W) || ph.p_memsz == 0) continue;
    uintptr_t start = (info->dlpi_addr + ph.p_vaddr) & ~(st->page - 1);
    uintptr_t end = (info->dlpi_addr + ph.p_vaddr + ph.p_memsz + st->page - 1) & ~(st->page - 1);
    DropRange(st, start, end);
    any = true;
  }
  if (any) st->objects++;
  return 0;
}

Napi::Value DropCleanFilePages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DropState st{};
  st.page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  st.vdso = static_cast<uintptr_t>(getauxval(AT_SYSINFO_EHDR));
  st.pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (st.pagemap < 0) throw SysError(env, errno, "open(/proc/self/pagemap)");
  dl_iterate_phdr(DropObject, &st);
  close(st.pagemap);
  if (st.failed && st.bytes == 0) throw SysError(env, st.failed, "madvise(MADV_DONTNEED)");
  Napi::Object out = Napi::Object::New(env);
  out.Set("bytes", Napi::Number::New(env, st.bytes));
  out.Set("objects", Napi::Number::New(env, st.objects));
  return out;
}

// Returns the C library's free heap memory to the kernel (all arenas).
Napi::Value MallocTrim(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), malloc_trim(0) != 0);
}

// mallopt(3) for the daemon's malloc tuning (src/cli/main.ts): the
// parameter by name, so that glibc's numbers stay here.
Napi::Value Mallopt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsNumber()) throw Napi::TypeError::New(env, "mallopt(name, value)");
  const std::string name = info[0].As<Napi::String>().Utf8Value();
  int param;
  if (name == "arenaMax") param = M_ARENA_MAX;
  else if (name == "trimThreshold") param = M_TRIM_THRESHOLD;
  else if (name == "mmapThreshold") param = M_MMAP_THRESHOLD;
  else throw Napi::TypeError::New(env, "mallopt: unknown parameter " + name);
  return Napi::Boolean::New(env, mallopt(param, info[1].As<Napi::Number>().Int32Value()) == 1);
}

// ---- module ---------------------------------------------------------------------------

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto fn = [&](const char* name, auto f) { exports.Set(name, Napi::Function::New(env, f, name)); };
  fn("ofdLock", SetLock<true>);
  fn("ofdUnlock", Unlock<true>);
  fn("ofdGetLock", GetLock<true>);
  fn("posixLock", SetLock<false>);
  fn("posixUnlock", Unlock<false>);
  fn("posixGetLock", GetLock<false>);
  fn("getCloexec", GetCloexec);
  fn("setCloexec", SetCloexec);
  fn("fsync", Fsync);
  fn("dup", Dup);
  fn("fdInfo", FdInfo);
  fn("fdInfoStart", FdInfoStart);
  fn("fdInfoTake", FdInfoTake);
  fn("peerCred", PeerCred);
  fn("peerPidfd", PeerPidfd);
  fn("execve", Execve);
  fn("sdNotify", SdNotify);
  fn("sdNotifyFds", SdNotifyFds);
  fn("memfdCreate", MemfdCreate);
  fn("sigmask", Sigmask);
  fn("sigpending", Sigpending);
  fn("sigdrain", Sigdrain);
  fn("execHoldRelease", ExecHoldRelease);
  fn("signalCapture", SignalCapture);
  fn("signalCaptureEnd", SignalCaptureEnd);
  fn("pidfdOpen", PidfdOpen);
  fn("pidfdGetfd", PidfdGetfd);
  fn("pidfdSendSignal", PidfdSendSignal);
  fn("pidfdExited", PidfdExited);
  fn("reapChild", ReapChild);
  fn("pidfdExitInfo", PidfdExitInfo);
  exports.Set("PidfdWatch", PidfdWatch::Define(env));
  exports.Set("PeekReader", PeekReader::Define(env));
  fn("recvPeek", RecvPeek);
  fn("recvDiscard", RecvDiscard);
  fn("lockFile", LockFile);
  fn("lockFileInline", LockFileInline);
  fn("releaseFile", ReleaseFile);
  fn("releaseFileInline", ReleaseFileInline);
  fn("strerror", Strerror);
  fn("probeStorage", ProbeStorage);
  fn("setCloexecAll", SetCloexecAll);
  fn("dropCleanFilePages", DropCleanFilePages);
  fn("mallocTrim", MallocTrim);
  fn("mallopt", Mallopt);
  return exports;
}

}  // namespace

NODE_API_MODULE(relockd_native, Init)
