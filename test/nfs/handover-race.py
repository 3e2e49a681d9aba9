#!/usr/bin/python3
# The cross-host lease-file handover race, with plain fcntl and no lock daemon
# (see docs/nfs-crosshost.md, "Findings"). Runs inside two lab guests:
#
#   holder (c1), per round i:  create+lock X_i; wait until the poller runs;
#                              unlink X_i; close (the release of an AUTOCREATE
#                              lease, as virtlockd and relockd do it); wait for
#                              the poller's grant; try X_i again: a grant here
#                              is a DOUBLE GRANT.
#   poller (c2), per round i:  ACQUIRE X_i back to back with VARIANT until granted.
#
# VARIANT base: virtlockd's and relockd's acquire: open (O_CREAT|O_EXCL when
#               missing), F_OFD_SETLK, then fstat(fd) and stat(path) must name
#               the same dev/ino, else retry. Errors (ESTALE) are retried.
# VARIANT sync: the same, but the identity check bypasses the NFS client's
#               caches: statx(dir, AT_STATX_FORCE_SYNC) first (revalidates the
#               directory, so the name is looked up again), then statx(fd) and
#               statx(path) with AT_STATX_FORCE_SYNC, and the locked file must
#               still have a link (nlink > 0).
#
# The two sides coordinate through flag files in $W (the lab's WORKDIR, which
# every guest mounts read-write at the same path):
#
#   S=test/nfs/lab/multihost-setup.sh; D=/mnt/nfs4/race; T=r$RANDOM
#   $S exec $W c1 "mkdir -p $D"
#   $S exec $W c2 "W=$W python3 $PWD/test/nfs/handover-race.py poller $D $T 100 base" &
#   $S exec $W c1 "W=$W python3 $PWD/test/nfs/handover-race.py holder $D $T 100 base"; wait
#
# Measured in this lab (Linux 6.1 UML client and knfsd): base 20/100 double
# grants over NFSv4.2, 23/100 over NFSv3; sync 0/100 on both.

import ctypes
import errno
import fcntl
import os
import struct
import sys
import time

F_OFD_SETLK = 37
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_STATX_FORCE_SYNC = 0x2000
STATX_BASIC_STATS = 0x7FF

libc = ctypes.CDLL(None, use_errno=True)


class Ts(ctypes.Structure):
    _fields_ = [('sec', ctypes.c_int64), ('nsec', ctypes.c_uint32), ('reserved', ctypes.c_int32)]


class Statx(ctypes.Structure):
    _fields_ = [('mask', ctypes.c_uint32), ('blksize', ctypes.c_uint32), ('attributes', ctypes.c_uint64),
                ('nlink', ctypes.c_uint32), ('uid', ctypes.c_uint32), ('gid', ctypes.c_uint32),
                ('mode', ctypes.c_uint16), ('spare0', ctypes.c_uint16), ('ino', ctypes.c_uint64),
                ('size', ctypes.c_uint64), ('blocks', ctypes.c_uint64), ('attributes_mask', ctypes.c_uint64),
                ('atime', Ts), ('btime', Ts), ('ctime', Ts), ('mtime', Ts),
                ('rdev_major', ctypes.c_uint32), ('rdev_minor', ctypes.c_uint32),
                ('dev_major', ctypes.c_uint32), ('dev_minor', ctypes.c_uint32), ('spare2', ctypes.c_uint64 * 14)]


def statx(path='', fd=AT_FDCWD, flags=0):
    b = Statx()
    if libc.statx(fd, path.encode(), flags | AT_STATX_FORCE_SYNC, STATX_BASIC_STATS, ctypes.byref(b)) < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return b


def lock(fd, typ):
    fcntl.fcntl(fd, F_OFD_SETLK, struct.pack('hhqqi4x', typ, 0, 0, 1, 0))


def wait_for(p):
    while not os.path.exists(p):
        time.sleep(0.001)


def attempt(path, variant):
    """One exclusive ACQUIRE: an fd (granted), 'busy', or what went wrong."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        lock(fd, fcntl.F_WRLCK)
    except OSError as e:
        os.close(fd)
        return 'busy' if e.errno in (errno.EAGAIN, errno.EACCES) else 'lock:' + errno.errorcode[e.errno]
    try:
        if variant == 'base':
            a, b = os.fstat(fd), os.stat(path)
            same = (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
        else:
            statx(os.path.dirname(path))
            a, b = statx('', fd, AT_EMPTY_PATH), statx(path)
            same = a.nlink > 0 and (a.dev_major, a.dev_minor, a.ino) == (b.dev_major, b.dev_minor, b.ino)
    except OSError as e:
        os.close(fd)
        return 'check:' + errno.errorcode[e.errno]
    if not same:
        os.close(fd)
        return 'check:replaced'
    return fd


def main():
    role, d, tag, n, variant = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    flags = os.path.join(os.environ['W'], 'handover-race-flags', tag)
    os.makedirs(flags, exist_ok=True)
    flag = lambda k, i: os.path.join(flags, '%s-%d' % (k, i))
    touch = lambda p: open(p, 'w').close()
    double = 0
    errs = {}
    for i in range(n):
        path = os.path.join(d, '%s-%d' % (tag, i))
        if role == 'holder':
            fd = attempt(path, 'base')
            assert isinstance(fd, int), fd
            touch(flag('held', i))
            wait_for(flag('polling', i))
            time.sleep(0.03)
            os.unlink(path)
            os.close(fd)
            wait_for(flag('granted', i))
            r = attempt(path, 'base')
            if isinstance(r, int):
                double += 1
                os.close(r)
            touch(flag('checked', i))
        else:
            wait_for(flag('held', i))
            first = True
            while True:
                r = attempt(path, variant)
                if first:
                    touch(flag('polling', i))
                    first = False
                if isinstance(r, int):
                    break
                if r != 'busy':
                    errs[r] = errs.get(r, 0) + 1
            touch(flag('granted', i))
            wait_for(flag('checked', i))
            os.close(r)
    if role == 'holder':
        print('%s: double grants %d/%d' % (variant, double, n), flush=True)
    else:
        print('%s: retried errors before the grants %s' % (variant, errs), flush=True)


main()
