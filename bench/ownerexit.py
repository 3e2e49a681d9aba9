#!/usr/bin/env python3
# Owner-exit latency: how long after its owner exits a lease is free again.
#
# usage: ownerexit.py SOCKET FILE REPS
#
# Per repetition a child process plays QEMU: it connects to the lock daemon,
# REGISTERs itself as the owner (its own pid, as libvirt does for the QEMU
# process it started), ACQUIREs FILE exclusively in the default lock space,
# and exits as soon as SIGTERM arrives (QEMU handles SIGTERM by shutting
# down). This process (libvirtd's role) sends the SIGTERM at t0, reaps the
# child as soon as it has exited, and tries a non-blocking POSIX lock on byte
# 0 of FILE every 50 µs until it succeeds at t1. Prints one JSON object:
# {"ms": [t1 - t0, ...], "errors": [...]}.

import fcntl, json, os, signal, socket, struct, sys, time, uuid

PROG, VERS = 0x0EA7BEEF, 1
REGISTER, ACQUIRE = 1, 6


def xstr(s):
    b = s.encode()
    return struct.pack('>I', len(b)) + b + b'\0' * ((4 - len(b) % 4) % 4)


def call(sock, proc, serial, body):
    hdr = struct.pack('>IIiiIi', PROG, VERS, proc, 0, serial, 0)
    data = hdr + body
    sock.sendall(struct.pack('>I', len(data) + 4) + data)
    n = struct.unpack('>I', recv_exact(sock, 4))[0]
    reply = recv_exact(sock, n - 4)
    status = struct.unpack('>i', reply[20:24])[0]
    if status != 0:
        raise RuntimeError(f'procedure {proc}: error reply')


def recv_exact(sock, n):
    out = b''
    while len(out) < n:
        b = sock.recv(n - len(out))
        if not b:
            raise RuntimeError('daemon closed the connection')
        out += b
    return out


def owner(sock_path, path, wfd):
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock_path)
        body = uuid.uuid4().bytes + xstr('ownerexit') + struct.pack('>III', 1, os.getpid(), 0)
        call(s, REGISTER, 1, body)
        call(s, ACQUIRE, 2, xstr('') + xstr(path) + struct.pack('>I', 0))
        os.write(wfd, b'r')
    except Exception as e:  # noqa: BLE001
        os.write(wfd, ('e' + str(e)).encode())
        os._exit(1)
    while True:
        signal.pause()


def once(sock_path, path):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        owner(sock_path, path, w)
        os._exit(0)
    os.close(w)
    msg = os.read(r, 4096)
    os.close(r)
    if msg != b'r':
        os.waitpid(pid, 0)
        raise RuntimeError(msg[1:].decode(errors='replace') or 'owner failed')
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
            raise RuntimeError('lease not held before the owner exited')
        except OSError:
            pass
        reaped = False
        t0 = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        while True:
            if not reaped:
                reaped = os.waitpid(pid, os.WNOHANG)[0] == pid
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
                t1 = time.monotonic()
                break
            except OSError:
                if time.monotonic() - t0 > 30:
                    raise RuntimeError('lease still held 30 s after its owner exited')
                time.sleep(0.00005)
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)
        if not reaped:
            os.waitpid(pid, 0)
        return (t1 - t0) * 1000
    finally:
        os.close(fd)


def main():
    sock_path, path, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    out = {'ms': [], 'errors': []}
    for _ in range(reps):
        try:
            out['ms'].append(once(sock_path, path))
        except Exception as e:  # noqa: BLE001
            out['errors'].append(str(e))
        time.sleep(0.05)
    print(json.dumps(out))


main()
