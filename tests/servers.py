"""Real Redis and etcd servers for the tests, on free loopback ports with temporary data.

Each server is a child process of the test run; ``stop()`` ends it (also at exit, should a
test forget). ``restart()`` keeps the port and data, for tests of reconnection.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class _Server:
    binary = ""

    def __init__(self) -> None:
        if shutil.which(self.binary) is None:
            raise RuntimeError(f"{self.binary} is not installed (make test installs it)")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"resilience-{self.binary}-"))
        self.proc: subprocess.Popen[bytes] | None = None
        atexit.register(self.close)

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        return _port_open(self.port)

    def spawn(self) -> None:
        """Start the process without waiting for it to be ready (members of a cluster wait for each other)."""
        log = open(self.dir / "server.log", "ab")  # noqa: SIM115 - kept open for the child
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        log.close()

    def start(self, timeout: float = 20.0) -> None:
        self.spawn()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 20.0) -> None:
        assert self.proc is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.binary} exited: {(self.dir / 'server.log').read_text()[-2000:]}")
            if self.ready():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.binary} did not become ready in {timeout}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash: no graceful shutdown, open connections reset."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer(_Server):
    binary = "redis-server"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ]

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False


class EtcdServer(_Server):
    """Debian's etcd, one member by default.

    Args:
        name: the member's name.
        progress_interval: ``--experimental-watch-progress-notify-interval`` (e.g. ``"300ms"``).
        auth_token_ttl: ``--auth-token-ttl`` in seconds (simple tokens expire when unused that long).
        tls: files from :func:`make_certs`: the client URL becomes https with that server certificate.
        client_cert_auth: with ``tls``, also require client certificates signed by the CA.
    """

    binary = "etcd"

    def __init__(
        self,
        *,
        name: str = "test",
        progress_interval: str | None = None,
        auth_token_ttl: int | None = None,
        tls: dict[str, str] | None = None,
        client_cert_auth: bool = False,
    ) -> None:
        super().__init__()
        self.name = name
        self.peer_port = free_port()
        self.progress_interval = progress_interval
        self.auth_token_ttl = auth_token_ttl
        self.tls = tls
        self.client_cert_auth = client_cert_auth
        self.initial_cluster: str | None = None  # set by EtcdCluster
        self.password: str | None = None  # root's, once auth is enabled

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def command(self) -> list[str]:
        peer = self.peer_url
        args = [
            "etcd",
            "--name",
            self.name,
            "--data-dir",
            str(self.dir / "data"),
            "--listen-client-urls",
            self.url,
            "--advertise-client-urls",
            self.url,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            self.initial_cluster or f"{self.name}={peer}",
            "--log-level",
            "error",
        ]
        if self.initial_cluster:
            args += ["--initial-cluster-token", "resilience-test", "--initial-cluster-state", "new"]
        if self.progress_interval:
            args += ["--experimental-watch-progress-notify-interval", self.progress_interval]
        if self.auth_token_ttl is not None:
            args += ["--auth-token-ttl", str(self.auth_token_ttl)]
        if self.tls:
            args += ["--cert-file", self.tls["server_cert"], "--key-file", self.tls["server_key"]]
            if self.client_cert_auth:
                args += ["--client-cert-auth", "--trusted-ca-file", self.tls["ca"]]
        return args

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.tls["ca"])
        context.load_cert_chain(self.tls["client_cert"], self.tls["client_key"])
        return context

    def post(self, path: str, body: dict[str, Any], token: str | None = None) -> tuple[int, dict[str, Any]]:
        """One request to the JSON gateway, with no client of the library in the way."""
        headers = {"Content-Type": "application/json", **({"Authorization": token} if token else {})}
        request = urllib.request.Request(f"{self.url}{path}", json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5, context=self.ssl_context()) as r:
                return int(r.status), json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return int(exc.code), json.loads(exc.read() or b"{}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=0.5, context=self.ssl_context()) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def enable_auth(self, password: str = "root-secret") -> str:
        """Create ``root`` with ``password`` and turn authentication on; returns the password."""
        for path, body in (
            ("/v3/auth/user/add", {"name": "root", "password": password}),
            ("/v3/auth/role/add", {"name": "root"}),
            ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
            ("/v3/auth/enable", {}),
        ):
            status, answer = self.post(path, body)
            if status != 200:
                raise RuntimeError(f"etcd {path} answered {status}: {answer}")
        self.password = password
        return password

    def token(self) -> str:
        """A fresh root token (auth must be enabled)."""
        status, answer = self.post("/v3/auth/authenticate", {"name": "root", "password": self.password})
        if status != 200:
            raise RuntimeError(f"etcd authenticate answered {status}: {answer}")
        return str(answer["token"])


class EtcdCluster:
    """Three etcd members on loopback, each with its own data directory."""

    def __init__(self, size: int = 3, **options: Any) -> None:
        self.members = [EtcdServer(name=f"m{i}", **options) for i in range(size)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial

    def start(self, timeout: float = 30.0) -> None:
        for member in self.members:
            member.spawn()
        for member in self.members:
            member.wait_ready(timeout)

    @property
    def hosts(self) -> str:
        """``127.0.0.1:p1,127.0.0.1:p2,...`` for an etcd:// URI."""
        return ",".join(f"127.0.0.1:{m.port}" for m in self.members)

    def close(self) -> None:
        for member in self.members:
            member.close()


class TcpProxy:
    """A loopback TCP relay to ``upstream_port`` that a test can cut (:meth:`block`) and restore.

    While blocked, open connections are reset and new ones are accepted and closed at
    once: the client behind it sees the server as down, while others reach it directly.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._threads: list[threading.Thread] = []
        self.blocked = False
        self._closed = False
        self._frozen: set[int] = set()  # ids of sockets whose data is dropped
        self.accepted = 0
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()
        atexit.register(self.close)

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.blocked:
                conn.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
            except OSError:
                conn.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self.accepted += 1
                self._pairs.append((conn, upstream))
            for src, dst in ((conn, upstream), (upstream, conn)):
                thread = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if id(src) not in self._frozen:
                    dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _cut(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def freeze(self) -> None:
        """Open connections stay open but carry nothing more (a silent peer); new ones work."""
        with self._lock:
            self._frozen.update(id(sock) for pair in self._pairs for sock in pair)

    def block(self) -> None:
        self.blocked = True
        self._cut()

    def unblock(self) -> None:
        self.blocked = False

    def close(self) -> None:
        self._closed = True
        self.blocked = True
        self._cut()
        self._listener.close()
        self._acceptor.join(2)
        for thread in self._threads:
            thread.join(2)


def make_certs(directory: Path) -> dict[str, str]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate (openssl)."""
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is not installed")
    d = directory
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d, timeout=30)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=resilience-test-ca")
    for who, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        run("req", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", f"/CN={who}")
        (d / f"{who}.ext").write_text(ext + "\n")
        run(
            "x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{who}.pem", "-days", "2", "-extfile", f"{who}.ext",
        )  # fmt: skip
    return {
        "ca": str(d / "ca.pem"),
        "server_cert": str(d / "server.pem"),
        "server_key": str(d / "server.key"),
        "client_cert": str(d / "client.pem"),
        "client_key": str(d / "client.key"),
    }
