#!/usr/bin/env python3
"""An `etcd` for Kubernetes' integration tests (scripts/k8s/integration puts
it first on PATH as `etcd`): Nod, or the real etcd 3.4, behind the unix
socket the tests ask for.

Some tests start stores of their own through test/integration/framework's
RunCustomEtcd: `etcd --data-dir D --listen-client-urls unix://D/etcd.sock
--advertise-client-urls ... --listen-peer-urls http://127.0.0.1:0
-log-level warn --quota-backend-bytes N [test flags]`, wait until the unix
socket accepts, stop it with SIGTERM and, after 5 s, SIGKILL. Neither Nod
nor etcd 3.4 listens on a unix:// client URL (etcd 3.5 does), so this
starts the server NOD_SHIM_SERVER names (`nod`: $NOD_BIN; `etcd`:
$NOD_SHIM_ETCD) on free loopback ports with the flags both share, and once
it is ready serves the unix socket by copying bytes to and from the
server's client port. The server's log goes to $NOD_SHIM_LOGS (one file per
start); the server dies with this process (PR_SET_PDEATHSIG), even on
SIGKILL.
"""

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request


def flags(argv):
    """etcd's flags as a dict: -f v, --f v, --f=v."""
    out, i = {}, 0
    while i < len(argv):
        a = argv[i].lstrip("-")
        if "=" in a:
            k, v = a.split("=", 1)
        elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            k, v = a, argv[i + 1]
            i += 1
        else:
            k, v = a, "true"
        out[k] = v
        i += 1
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main():
    f = flags(sys.argv[1:])
    data_dir = f.get("data-dir") or sys.exit("etcd-shim: --data-dir is required")
    listen = f.get("listen-client-urls", "")
    if not listen.startswith("unix://"):
        sys.exit(f"etcd-shim: only a unix:// --listen-client-urls is served (got {listen!r})")
    sock_path = listen[len("unix://"):]
    client, peer, metrics = free_port(), free_port(), free_port()
    kind = os.environ.get("NOD_SHIM_SERVER", "nod")
    urls = ["--listen-client-urls", f"http://127.0.0.1:{client}",
            "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--listen-metrics-urls", f"http://127.0.0.1:{metrics}",
            "--initial-cluster", f"shim=http://127.0.0.1:{peer}", "--name", "shim"]
    if kind == "nod":
        args = [os.environ["NOD_BIN"], "server", "--data-dir", os.path.join(data_dir, "server"), *urls]
    else:
        args = [os.environ["NOD_SHIM_ETCD"], "--data-dir", os.path.join(data_dir, "server"), *urls,
                "--log-level", "warn"]
    for k in ("experimental-watch-progress-notify-interval", "quota-backend-bytes"):
        if k in f:
            args += [f"--{k}", f[k]]
    logs = os.environ.get("NOD_SHIM_LOGS", data_dir)
    os.makedirs(logs, exist_ok=True)
    log = open(os.path.join(logs, f"{kind}-{os.getpid()}.log"), "w")
    log.write(f"etcd-shim: {' '.join(sys.argv)}\n-> {' '.join(args)}\n")
    log.flush()
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                            preexec_fn=lambda: libc.prctl(1, signal.SIGKILL))   # PR_SET_PDEATHSIG

    def stop(*_):
        proc.terminate()
        try:
            proc.wait(4)
        except subprocess.TimeoutExpired:
            proc.kill()
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Nod's /readyz is on its metrics port; etcd 3.4 has /health on the client port.
    ready = f"http://127.0.0.1:{metrics}/readyz" if kind == "nod" else f"http://127.0.0.1:{client}/health"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            sys.exit(f"etcd-shim: {kind} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(ready, timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"etcd-shim: {kind} not ready in 30 s")
        time.sleep(0.1)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    server.bind(sock_path)
    server.listen(128)
    while True:
        conn, _ = server.accept()
        try:
            up = socket.create_connection(("127.0.0.1", client))
        except OSError:
            conn.close()
            continue
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pipe, args=(conn, up), daemon=True).start()
        threading.Thread(target=pipe, args=(up, conn), daemon=True).start()


if __name__ == "__main__":
    main()
