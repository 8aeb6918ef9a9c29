"""Helpers of the security tests: private servers (redis-server, a Postgres cluster) this session
owns and may stop, restart or kill; process lookup; condition polling."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from glob import glob
from pathlib import Path

import pytest
from svc_helpers import wait_for


@dataclass
class PrivateServer:
    """A server process this test session owns (safe to kill and restart)."""

    url: str
    port: int
    workdir: Path
    proc: subprocess.Popen | None = None


def _redis_binary() -> str:
    found = shutil.which("redis-server") or next(iter(glob("/usr/bin/redis-server*")), None)
    if not found:
        pytest.fail("redis-server is required for the fault tests")
    return found


def start_private_redis(server: PrivateServer) -> None:
    """(Re)start the private redis-server on its fixed port (appendonly, so a restart keeps the queue)."""
    import redis

    cmd = [_redis_binary(), "--port", str(server.port), "--bind", "127.0.0.1", "--dir", str(server.workdir)]
    cmd += ["--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no"]
    log = open(server.workdir / "redis.log", "ab")  # noqa: SIM115 - the process owns it
    server.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: redis.Redis.from_url(server.url).ping(), 30, "private redis", server.proc)


def pg_bin(name: str) -> str:
    found = sorted(glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        pytest.fail(f"{name} (PostgreSQL server binaries) is required for the fault tests")
    return found[-1]


def as_pg_user(cmd: list[str]) -> list[str]:
    """Postgres refuses to run as root: drop to the `postgres` system user when we are root."""

    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def start_private_postgres(server: PrivateServer) -> None:
    """(Re)start the private cluster (pg_ctl -w waits until it accepts connections)."""
    data = server.workdir / "data"
    cmd = [pg_bin("pg_ctl"), "-D", str(data), "-l", str(server.workdir / "pg.log"), "-w", "-t", "60", "start"]
    subprocess.run(as_pg_user(cmd), check=True, capture_output=True)


def stop_private_postgres(server: PrivateServer, mode: str = "immediate") -> None:
    cmd = [pg_bin("pg_ctl"), "-D", str(server.workdir / "data"), "-m", mode, "-w", "stop"]
    subprocess.run(as_pg_user(cmd), check=False, capture_output=True)


def wait_until(predicate, timeout_s: float, what: str) -> None:  # noqa: ANN001
    """Poll `predicate` until true (a condition, not a timing claim)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not reached within {timeout_s}s")


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc: no psutil dependency)."""
    children = []
    for stat in glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.split("/")[2]))
    return children


class TcpProxy:
    """A loopback TCP forwarder the test can cut: the service talks to it as if it were the real
    server, and `close()` makes the server look gone (connections refused, live ones reset)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        import socket
        import threading

        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:  # noqa: ANN001 - sockets
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        import socket

        self.closed = True
        with contextlib.suppress(OSError):  # wakes the blocked accept(); close() alone would not stop it
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass
