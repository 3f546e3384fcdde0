"""One benchmark run: the phases, in order, each bounded by timeouts.

Order: the floor (raw kafka-python), this library against a worker
process on Kafka, the two by turns, Faust, then this library on
``memory://``. Each phase's server processes are stopped before the next
phase starts, so only the ones measured use the CPU. Everything started is recorded
on an :class:`contextlib.ExitStack` and undone on the way out, also on
Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from bench.procs import REPO_ROOT, Process, StartError, rss_bytes
from bench.report import Cell, Row, percentile

THREADS = 16


@dataclass(frozen=True)
class Sizes:
    """How many samples each phase takes."""

    warmup: int  # asks before any timing, per column
    asks: int  # sequential asks timed
    per_thread: int  # asks per thread in the 16-thread row
    join: int  # requests in a join / map / pipelined burst
    faust_asks: int  # sequential asks timed through Faust
    rss_asks: int  # asks over which RSS growth is measured ...
    rss_budget: float  # ... unless this many seconds pass first
    timeout: float  # seconds for a join / map / burst / thread row
    faust_join_timeout: float  # seconds before Faust's join counts as a hang
    rounds: int  # rounds of the floor and the library by turns


SIZES = {
    "smoke": Sizes(warmup=5, asks=30, per_thread=5, join=200, faust_asks=20,
                   rss_asks=500, rss_budget=10, timeout=30, faust_join_timeout=15, rounds=2),
    "quick": Sizes(warmup=20, asks=200, per_thread=20, join=1_000, faust_asks=100,
                   rss_asks=20_000, rss_budget=15, timeout=60, faust_join_timeout=15, rounds=3),
    "full": Sizes(warmup=100, asks=1_000, per_thread=250, join=10_000, faust_asks=500,
                  rss_asks=100_000, rss_budget=300, timeout=180, faust_join_timeout=120, rounds=5),
}

ASK_TIMEOUT = 30.0
READY_TIMEOUT = 90.0
# A floor echo is ready in a second or two; one that is not after this
# long is replaced, at most ECHO_ATTEMPTS times in all.
ECHO_READY_TIMEOUT = 30.0
ECHO_ATTEMPTS = 3


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def make_rows(sizes: Sizes) -> Dict[str, Row]:
    join = f"{sizes.join:,}"
    rows = [
        Row("ask_p50", "sequential ask p50", "ms", "lower"),
        Row("ask_p99", "sequential ask p99", "ms", "lower"),
        Row("threads_rate", f"ask from {THREADS} threads", "asks/s", "higher", 0),
        Row("threads_p50", f"ask from {THREADS} threads p50", "ms", "lower"),
        Row("threads_p99", f"ask from {THREADS} threads p99", "ms", "lower"),
        Row("join", f"join of {join} (floor: pipelined burst)", "replies/s", "higher", 0),
        Row("map", f"map of {join} (floor: pipelined burst)", "replies/s", "higher", 0),
        Row("start", "start to first reply", "s", "lower", 3),
        Row("rss_client", "RSS growth over n asks, asking process", "MiB", "lower", 1),
        Row("rss_worker", "RSS growth over n asks, worker process", "MiB", "lower", 1),
        # The same rows with the worker at `--loglevel warning`: no log line
        # per request (the floor and Faust write none); their floor and
        # Faust cells are those of the rows above.
        Row("ask_p50_quiet", "sequential ask p50, worker --loglevel warning", "ms", "lower"),
        Row("join_quiet", f"join of {join}, worker --loglevel warning", "replies/s", "higher", 0),
        Row("map_quiet", f"map of {join}, worker --loglevel warning", "replies/s", "higher", 0),
        # The floor and the library (default worker) by turns: medians of
        # the rounds, so that a machine whose speed drifts during the run
        # tilts both columns alike.
        Row("ask_p50_turns", f"sequential ask p50, by turns ({sizes.rounds} rounds)", "ms", "lower"),
        Row("join_turns", f"join of {join}, by turns ({sizes.rounds} rounds)", "replies/s", "higher", 0),
        Row("ask_p50_turns_quiet", "sequential ask p50, by turns, worker --loglevel warning", "ms", "lower"),
        Row("join_turns_quiet", f"join of {join}, by turns, worker --loglevel warning", "replies/s", "higher", 0),
    ]
    return {row.key: row for row in rows}


def latency_cells(latencies: List[float]) -> Tuple[Cell, Cell]:
    n = len(latencies)
    return (Cell(percentile(latencies, 50) * 1000, n), Cell(percentile(latencies, 99) * 1000, n))


def failed(exc: BaseException, seconds: Optional[float] = None) -> Cell:
    """A cell for a phase that did not finish."""
    if isinstance(exc, TimeoutError):
        return Cell(status="timeout", seconds=seconds, note=f"no result within {seconds or ASK_TIMEOUT:.0f} s: {exc}")
    return Cell(status="error", note=f"{type(exc).__name__}: {exc}"[:300])


#: Rows measured again with a quiet worker, and the rows they repeat.
QUIET = {"ask_p50_quiet": "ask_p50", "join_quiet": "join", "map_quiet": "map"}
#: Rows of the phase that measures the floor and the library by turns.
TURNS = ("ask_p50_turns", "join_turns", "ask_p50_turns_quiet", "join_turns_quiet")


def timed_sequential(ask: Callable[[int], Any], count: int) -> List[float]:
    latencies = []
    for i in range(count):
        t = time.perf_counter()
        ask(i)
        latencies.append(time.perf_counter() - t)
    return latencies


def from_threads(ask: Callable[[int], Any], per_thread: int, timeout: float,
                 budget: Optional[float] = None) -> Tuple[float, List[float]]:
    """``THREADS`` threads of ``per_thread`` asks each; return (asks/s, latencies).

    With ``budget`` (seconds), the threads stop asking once it has passed,
    without error: fewer asks, counted in the latencies returned.

    Raises:
        TimeoutError: the threads were not done within ``timeout``.
        Exception: the first error an ask raised.
    """
    go = threading.Event()
    latencies: List[float] = []
    errors: List[BaseException] = []
    deadline = time.monotonic() + timeout
    stop_at = time.monotonic() + budget if budget is not None else None

    def run(n: int) -> None:
        go.wait(timeout)
        mine = []
        try:
            for i in range(per_thread):
                now = time.monotonic()
                if stop_at is not None and now > stop_at:
                    break
                if now > deadline:
                    raise TimeoutError(f"{THREADS} threads not done within {timeout:.0f} s")
                t = time.perf_counter()
                ask(n * per_thread + i)
                mine.append(time.perf_counter() - t)
        except BaseException as exc:
            errors.append(exc)
        latencies.extend(mine)  # list.extend is atomic

    threads = [threading.Thread(target=run, args=(n,), name=f"bench-asker-{n}", daemon=True)
               for n in range(THREADS)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    go.set()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + ASK_TIMEOUT)
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    if any(thread.is_alive() for thread in threads):
        raise TimeoutError(f"{THREADS} threads not done within {timeout:.0f} s")
    return len(latencies) / elapsed, latencies


def undo_safely(what: str, undo: Callable[[], Any]) -> None:
    try:
        undo()
    except Exception as exc:
        log(f"cleanup: could not {what}: {type(exc).__name__}: {exc}")


def check(expected: Any, got: Any) -> None:
    if got != expected:
        raise RuntimeError(f"wrong reply: expected {expected!r}, got {got!r}"[:300])


class Run:
    """One benchmark run on one broker: fills ``rows``."""

    def __init__(self, bootstrap: str, size: str, stack: contextlib.ExitStack, workdir: Path,
                 faust_python: Optional[str]) -> None:
        self.bootstrap = bootstrap
        self.size = size
        self.sizes = SIZES[size]
        self.stack = stack
        self.workdir = workdir
        self.faust_python = faust_python
        self.run_id = f"bench-{uuid.uuid4().hex[:6]}"
        self.rows = make_rows(self.sizes)
        self.meta: Dict[str, Any] = {}
        self._admin: Any = None

    def put(self, key: str, column: str, cell: Cell) -> None:
        self.rows[key].cells[column] = cell

    def put_error(self, keys: List[str], column: str, exc: BaseException, seconds: Optional[float] = None) -> None:
        for key in keys:
            if column not in self.rows[key].cells:
                self.put(key, column, failed(exc, seconds))

    def env(self, extra: Dict[str, str]) -> Dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra)
        return env

    def process(self, name: str, argv: List[str], env: Dict[str, str], cwd: Optional[Path] = None) -> Process:
        proc = Process(name, argv, self.workdir / f"{name}.log", env=env, cwd=cwd)
        self.on_exit(f"stop {name}", proc.stop)
        return proc

    def on_exit(self, what: str, undo: Callable[[], Any]) -> None:
        """Run ``undo`` when the run ends, however; log (never raise) its errors."""
        self.stack.callback(undo_safely, what, undo)

    # -- (a) the floor --------------------------------------------------------

    def start_echo(self, name: str) -> Tuple[Process, str]:
        """A floor echo process serving a topic of its own; the topic.

        Raises:
            StartError: the echo did not start in time.
        """
        from kafka.admin import NewTopic

        from bench.floor import READY

        topic = f"{self.run_id}-{name}"
        self.admin().create_topics([NewTopic(topic, 8, 1)])
        argv = [sys.executable, "-m", "bench.floor", "echo", "--bootstrap", self.bootstrap, "--topic", topic,
                "--group", f"{topic}-echo"]
        attempt = 1
        while True:
            echo = self.process(f"{name}-echo" + (f"-{attempt}" if attempt > 1 else ""), argv, self.env({}))
            try:
                log(f"{name}: echo ready in {echo.wait_for_log([READY], ECHO_READY_TIMEOUT):.1f} s")
                return echo, topic
            except StartError as exc:
                echo.stop()
                if attempt == ECHO_ATTEMPTS:
                    raise
                # Seen now and then: kafka-python's consumer stays stuck
                # looking for its group coordinator after joining.
                log(f"{name}: {str(exc).splitlines()[0].rstrip(':')}; starting another echo")
                attempt += 1

    def floor_requester(self, topic: str) -> Any:
        """A floor requester of ``topic`` (its reply topic made first)."""
        from kafka.admin import NewTopic

        from bench.floor import Requester

        reply_to = f"{topic}-reply"
        self.admin().create_topics([NewTopic(reply_to, 1, 1)])
        requester = Requester(self.bootstrap, topic, reply_to)
        self.on_exit("close the floor requester", requester.close)
        return requester

    def admin(self) -> Any:
        """The run's admin client (made on first use)."""
        if self._admin is None:
            from kafka.admin import KafkaAdminClient

            self._admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
            self.on_exit("close the admin client", self._admin.close)
        return self._admin

    def floor_rate(self, requester: Any) -> Cell:
        """Replies per second of one pipelined burst through the floor."""
        values = [str(i).encode() for i in range(self.sizes.join)]
        t = time.perf_counter()
        check(values, requester.join(values, self.sizes.timeout))
        return Cell(self.sizes.join / (time.perf_counter() - t), self.sizes.join)

    def floor(self) -> None:
        s = self.sizes
        keys = [k for k in self.rows if k not in QUIET and k not in TURNS]
        echo: Optional[Process] = None
        requester: Any = None
        try:
            echo, topic = self.start_echo("floor")
            started = time.perf_counter()
            requester = self.floor_requester(topic)
            check(b"1", requester.ask(b"1", ASK_TIMEOUT))
            self.put("start", "floor", Cell(time.perf_counter() - started, 1, note=(
                "reply topic created, producer and consumer made, first reply in")))
            for i in range(s.warmup):
                requester.ask(str(i).encode(), ASK_TIMEOUT)
            p50, p99 = latency_cells(timed_sequential(lambda i: requester.ask(str(i).encode(), ASK_TIMEOUT), s.asks))
            self.put("ask_p50", "floor", p50)
            self.put("ask_p99", "floor", p99)
            log(f"floor: sequential ask p50 {p50.value:.2f} ms")
            rate, latencies = from_threads(lambda i: requester.ask(str(i).encode(), ASK_TIMEOUT),
                                           s.per_thread, s.timeout)
            self.put("threads_rate", "floor", Cell(rate, len(latencies)))
            p50, p99 = latency_cells(latencies)
            self.put("threads_p50", "floor", p50)
            self.put("threads_p99", "floor", p99)
            for key in ("join", "map"):
                self.put(key, "floor", self.floor_rate(requester))
            log(f"floor: pipelined {self.rows['join'].cells['floor'].value:,.0f} replies/s")
        except (Exception, StartError) as exc:
            log(f"floor: {type(exc).__name__}: {exc}")
            self.put_error(keys, "floor", exc, s.timeout)
        finally:
            if requester is not None:
                requester.close()  # its reply thread must not poll on during the other columns
            if echo is not None:
                echo.stop()
        for key in ("rss_client", "rss_worker"):
            self.rows[key].cells.pop("floor", None)

    # -- (b) replies with a worker process on Kafka ---------------------------

    def replies_kafka(self, quiet: bool = False) -> None:
        """The library's rows with a worker process; with ``quiet``, only the
        ``QUIET`` rows, the worker at ``--loglevel warning``."""
        import replies

        s = self.sizes
        app_id = f"{self.run_id}-rk" + ("q" if quiet else "")
        keys = list(QUIET) if quiet else [k for k in self.rows if k not in QUIET and k not in TURNS]
        worker: Optional[Process] = None
        app: Optional[replies.App] = None
        try:
            worker = self.start_worker(app_id, quiet)
            started = time.perf_counter()
            app = self.client(f"{self.run_id}-client")
            topic = app.topic(f"{app_id}-double")
            check(2, topic.ask(1))
            if quiet:
                self.quiet_rows(topic)
                return
            self.put("start", "kafka", Cell(time.perf_counter() - started, 1, note=(
                "App made and started (reply topic created), first ask answered")))
            self.library_rows("kafka", topic, worker.pid)
        except (Exception, StartError) as exc:
            log(f"replies on Kafka: {type(exc).__name__}: {exc}")
            self.put_error(keys, "kafka", exc, s.timeout)
        finally:
            if app is not None:
                with contextlib.suppress(Exception):
                    app.close(10)
            if worker is not None:
                worker.stop()

    def start_worker(self, app_id: str, quiet: bool = False) -> Process:
        """A ``python -m replies worker`` serving ``bench.agent``, once it answers.

        Raises:
            StartError: the worker did not start in time.
            replies.NoRespondersError: its topic was not made in time.
        """
        import replies

        broker = f"kafka://{self.bootstrap}"
        argv = [sys.executable, "-m", "replies", "worker", "bench.agent:app"]
        worker = self.process(f"replies-worker-{app_id[len(self.run_id) + 1:]}",
                              argv + (["--loglevel", "warning"] if quiet else []),
                              self.env({"BENCH_BROKER": broker, "BENCH_APP_ID": app_id}))
        ready = worker.wait_for_log(
            # A quiet worker logs nothing when it is ready: the probe tells.
            [] if quiet else [f"serving agent double on topic {app_id}-double"], READY_TIMEOUT)
        # The worker logs that it serves before its group has partitions:
        # one answered ask from a throwaway App says it really serves.
        t = time.perf_counter()
        with replies.App(f"{self.run_id}-probe", broker=broker, reply_to_prefix=f"{self.run_id}-reply-",
                         request_timeout=READY_TIMEOUT) as probe:
            deadline = time.monotonic() + READY_TIMEOUT
            while True:
                try:
                    check(2, probe.topic(f"{app_id}-double").ask(1))
                    break
                except replies.NoRespondersError:  # its topic is not made yet
                    if time.monotonic() > deadline or worker.proc.poll() is not None:
                        raise
                    time.sleep(0.1)
        log(f"replies on Kafka: worker {app_id} logged ready in {ready:.1f} s, answered a probe in "
            f"{time.perf_counter() - t:.1f} s more")
        return worker

    def client(self, app_id: str) -> Any:
        """A started App asking on the run's broker (closed when the run ends)."""
        import replies

        app = replies.App(app_id, broker=f"kafka://{self.bootstrap}", reply_to_prefix=f"{self.run_id}-reply-",
                          request_timeout=ASK_TIMEOUT)
        self.on_exit(f"close App {app.id}", lambda: app.close(10))
        app.start()
        return app

    # -- (e) the floor and the library by turns ----------------------------------

    def by_turns(self) -> None:
        """Sequential asks and joins through the floor, the library with a
        worker at default settings, and the library with a worker at
        ``--loglevel warning``, by turns, round after round (each goes first
        in turn); each cell is the median of its rounds. The other rows
        measure one column after the other, minutes apart on a full run."""
        s = self.sizes
        processes: List[Process] = []
        requester: Any = None
        app: Any = None
        try:
            echo, floor_topic = self.start_echo("turns-floor")
            processes.append(echo)
            requester = self.floor_requester(floor_topic)
            asks: Dict[str, Callable[[int], None]] = {
                "floor": lambda i: check(str(i).encode(), requester.ask(str(i).encode(), ASK_TIMEOUT))}
            joins: Dict[str, Callable[[], Cell]] = {"floor": lambda: self.floor_rate(requester)}
            app = self.client(f"{self.run_id}-turns-client")
            for name, quiet in (("kafka", False), ("quiet", True)):
                app_id = f"{self.run_id}-turns" + ("q" if quiet else "")
                processes.append(self.start_worker(app_id, quiet))
                asks[name], joins[name] = self.library_calls(app.topic(f"{app_id}-double"))
            for i in range(s.warmup):
                for ask in asks.values():
                    ask(i)
            per_round = max(1, s.asks // s.rounds)
            p50s: Dict[str, List[float]] = {name: [] for name in asks}
            rates: Dict[str, List[float]] = {name: [] for name in asks}
            names = list(asks)
            for n in range(s.rounds):
                order = names[n % len(names):] + names[:n % len(names)]
                for name in order:
                    p50s[name].append(percentile(timed_sequential(asks[name], per_round), 50) * 1000)
                for name in order:
                    cell = joins[name]()
                    if cell.value is None:
                        raise TimeoutError(cell.note)
                    rates[name].append(cell.value)
                log(f"by turns, round {n + 1}: ask p50 (ms) " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in p50s.items())
                    + "; join (replies/s) " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items()))
            for key, figures, digits in (("ask_p50_turns", p50s, 2), ("join_turns", rates, 0)):
                for row, name in ((key, "kafka"), (f"{key}_quiet", "quiet")):
                    ratios = ", ".join(f"{k / f:.2f}" for k, f in zip(figures[name], figures["floor"]))
                    for column, values in (("floor", figures["floor"]), ("kafka", figures[name])):
                        rounds = ", ".join(f"{v:,.{digits}f}" for v in values)
                        self.put(row, column, Cell(statistics.median(values), len(values), note=(
                            f"median of rounds {rounds}" + (f"; replies/floor by round {ratios}"
                                                            if column == "kafka" else ""))))
        except (Exception, StartError) as exc:
            log(f"by turns: {type(exc).__name__}: {exc}")
            for column in ("floor", "kafka"):
                self.put_error(list(TURNS), column, exc, s.timeout)
        finally:
            if app is not None:
                with contextlib.suppress(Exception):
                    app.close(10)
            if requester is not None:
                requester.close()
            for process in processes:
                process.stop()

    def library_calls(self, topic: Any) -> Tuple[Callable[[int], None], Callable[[], Cell]]:
        """One checked ask of ``topic``, and one timed join of it."""
        return (lambda i: check(2 * i, topic.ask(i)),
                lambda: self.rate(topic.join, self.sizes.join, ordered=True))

    def quiet_rows(self, topic: Any) -> None:
        s = self.sizes
        for i in range(s.warmup):
            topic.ask(i)
        topic.join(range(min(s.join, 200)), timeout=s.timeout)
        p50, _ = latency_cells(timed_sequential(lambda i: check(2 * i, topic.ask(i)), s.asks))
        self.put("ask_p50_quiet", "kafka", p50)
        self.put("join_quiet", "kafka", self.rate(topic.join, s.join, ordered=True))
        self.put("map_quiet", "kafka", self.rate(topic.map, s.join, ordered=False))
        log(f"replies on Kafka, worker --loglevel warning: sequential ask p50 {p50.value:.2f} ms, join "
            f"{self.rows['join_quiet'].cell('kafka').text(0)}, map "
            f"{self.rows['map_quiet'].cell('kafka').text(0)} replies/s")

    def rate(self, call: Callable[..., Any], count: int, *, ordered: bool) -> Cell:
        """Replies per second of one ``join`` or ``map`` of ``count`` values."""
        values = list(range(count))
        t = time.perf_counter()
        try:
            got = call(values, timeout=self.sizes.timeout)
            check([2 * v for v in values], got if ordered else sorted(got))
            return Cell(count / (time.perf_counter() - t), count)
        except TimeoutError as exc:
            return failed(exc, self.sizes.timeout)

    def share_references(self) -> None:
        """Give the ``QUIET`` rows the floor and Faust cells of the rows they repeat."""
        for quiet, base in QUIET.items():
            for column in ("floor", "faust"):
                cell = self.rows[base].cells.get(column)
                if cell is not None and "kafka" in self.rows[quiet].cells:
                    self.rows[quiet].cells[column] = cell

    def library_rows(self, column: str, topic: Any, worker_pid: Optional[int]) -> None:
        """The rows both library columns share; RSS rows only with a worker process."""
        s = self.sizes
        name = {"kafka": "replies on Kafka", "memory": "replies on memory://"}[column]
        for i in range(s.warmup):
            topic.ask(i)
        topic.join(range(min(s.join, 200)), timeout=s.timeout)
        p50, p99 = latency_cells(timed_sequential(lambda i: check(2 * i, topic.ask(i)), s.asks))
        self.put("ask_p50", column, p50)
        self.put("ask_p99", column, p99)
        log(f"{name}: sequential ask p50 {p50.value:.2f} ms")
        rate, latencies = from_threads(lambda i: check(2 * i, topic.ask(i)), s.per_thread, s.timeout)
        self.put("threads_rate", column, Cell(rate, len(latencies)))
        p50, p99 = latency_cells(latencies)
        self.put("threads_p50", column, p50)
        self.put("threads_p99", column, p99)
        log(f"{name}: {THREADS} threads {rate:,.0f} asks/s")
        self.put("join", column, self.rate(topic.join, s.join, ordered=True))
        log(f"{name}: join {self.rows['join'].cell(column).text(0)} replies/s")
        self.put("map", column, self.rate(topic.map, s.join, ordered=False))
        log(f"{name}: map {self.rows['map'].cell(column).text(0)} replies/s")
        if worker_pid is None:
            return
        # RSS: after the warm-up above; the same 16-thread asks, many more.
        per_thread = max(1, s.rss_asks // THREADS)
        gc.collect()
        client0, worker0 = rss_bytes(), rss_bytes(worker_pid)
        rss_timeout = s.rss_budget + ASK_TIMEOUT
        try:
            rate, latencies = from_threads(lambda i: check(2 * i, topic.ask(i)), per_thread, rss_timeout,
                                           budget=s.rss_budget)
        except TimeoutError as exc:
            self.put("rss_client", column, failed(exc, rss_timeout))
            self.put("rss_worker", column, failed(exc, rss_timeout))
            return
        gc.collect()
        client1, worker1 = rss_bytes(), rss_bytes(worker_pid)
        n = len(latencies)
        cut = ""
        if n < per_thread * THREADS:
            cut = f"; stopped after {s.rss_budget:.0f} s, short of {per_thread * THREADS:,}"
        self.put("rss_client", column, Cell((client1 - client0) / 2**20, n,
                                            note=f"{client0 / 2**20:.1f} -> {client1 / 2**20:.1f} MiB{cut}"))
        self.put("rss_worker", column, Cell((worker1 - worker0) / 2**20, n,
                                            note=f"{worker0 / 2**20:.1f} -> {worker1 / 2**20:.1f} MiB{cut}"))
        log(f"{name}: RSS growth over {n:,} asks: asking process {(client1 - client0) / 2**20:.1f} MiB, "
            f"worker {(worker1 - worker0) / 2**20:.1f} MiB")

    # -- (c) Faust --------------------------------------------------------------

    def faust(self) -> None:
        s = self.sizes
        keys = ["ask_p50", "ask_p99", "join", "start"]
        if not self.faust_python:
            for key in keys:
                self.put(key, "faust", Cell(status="error", note="no Faust interpreter (see --faust-python)"))
            return
        app_id = f"{self.run_id}-faust"
        here = Path(__file__).resolve().parent / "faust_side"
        broker = ";".join(f"kafka://{b.strip()}" for b in self.bootstrap.split(",") if b.strip())
        env = dict(os.environ)
        env.pop("PYTHONHOME", None)
        env.update({"PYTHONPATH": str(here), "PYTHONUNBUFFERED": "1", "BENCH_FAUST_BROKER": broker,
                    "BENCH_FAUST_ID": app_id, "BENCH_FAUST_DATADIR": str(self.workdir / "faust-data")})
        worker: Optional[Process] = None
        try:
            worker = self.process("faust-worker", [self.faust_python, "-m", "faust", "-A", "bench_fagent",
                                                   "worker", "-l", "info", "--without-web"], env, cwd=self.workdir)
            ready = worker.wait_for_log(["[^Worker]: Ready"], READY_TIMEOUT)
            log(f"Faust: worker ready in {ready:.1f} s")
            client_timeout = 60 + s.faust_join_timeout + (s.warmup + s.faust_asks) * 0.1
            argv = [self.faust_python, str(here / "bench_fclient.py"), "--broker", broker,
                    "--topic", f"{app_id}-bench_fagent.double", "--app-id", f"{self.run_id}-fclient",
                    "--reply-to-prefix", f"{self.run_id}-freply-", "--asks", str(s.faust_asks),
                    "--warmup", str(s.warmup), "--ask-timeout", str(ASK_TIMEOUT),
                    "--join", str(s.join), "--join-timeout", str(s.faust_join_timeout)]
            client = self.process("faust-client", argv, env, cwd=self.workdir)
            try:
                client.proc.wait(client_timeout)
            except Exception:
                log(f"Faust: client still running after {client_timeout:.0f} s: stopped")
            client.stop(5)
            self.faust_results(client.log_text(), client_timeout)
        except (Exception, StartError) as exc:
            log(f"Faust: {type(exc).__name__}: {exc}")
            for key in keys:
                if "faust" not in self.rows[key].cells:
                    self.put(key, "faust", failed(exc, READY_TIMEOUT))
        finally:
            if worker is not None:
                worker.stop()

    def faust_results(self, output: str, client_timeout: float) -> None:
        s = self.sizes
        phases = {}
        for line in output.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    phases[record.get("phase")] = record
        error = phases.get("error", {}).get("error")
        self.meta["faust"] = phases.get("version", {}).get("faust", "?")
        if "start" in phases:
            self.put("start", "faust", Cell(phases["start"]["seconds"], 1, note=(
                "App made, client started by the first ask, first reply in (imports not counted)")))
        if "ask" in phases:
            p50, p99 = latency_cells(phases["ask"]["latencies"])
            self.put("ask_p50", "faust", p50)
            self.put("ask_p99", "faust", p99)
            log(f"Faust: sequential ask p50 {p50.value:.2f} ms")
        join = phases.get("join")
        if join and "seconds" in join:
            self.put("join", "faust", Cell(join["n"] / join["seconds"], join["n"]))
            log(f"Faust: join {join['n'] / join['seconds']:,.0f} replies/s")
        elif join:
            self.put("join", "faust", Cell(status="hang", seconds=join["timeout"], note=(
                f"join of {join['n']:,} got no complete answer within {join['timeout']:.0f} s")))
            log(f"Faust: join of {join['n']:,} hung (timeout {join['timeout']:.0f} s)")
        for key in ("start", "ask_p50", "ask_p99", "join"):
            if "faust" not in self.rows[key].cells:
                note = error or f"the Faust client printed nothing for it within {client_timeout:.0f} s"
                self.put(key, "faust", Cell(status="error" if error else "timeout", note=note[:300]))

    # -- (d) replies on memory:// -------------------------------------------------

    def replies_memory(self) -> None:
        import replies

        broker = f"memory://{self.run_id}"
        app = replies.App(f"{self.run_id}-mem", broker=broker, topic_partitions=8, request_timeout=ASK_TIMEOUT)

        @app.agent()
        def double(value: Any) -> Any:
            return value * 2

        try:
            self.on_exit(f"close App {app.id}", lambda: app.close(10))
            app.serve()
            app.start()
            self.library_rows("memory", app.topic(double.topic_name), None)
        except Exception as exc:
            log(f"replies on memory://: {type(exc).__name__}: {exc}")
            self.put_error(["ask_p50", "ask_p99", "threads_rate", "threads_p50", "threads_p99", "join", "map"],
                           "memory", exc, self.sizes.timeout)
        finally:
            app.close(10)

    # -- cleanup ---------------------------------------------------------------

    def delete_topics(self) -> None:
        """Delete this run's topics and consumer groups (all named ``bench-<id>...``)."""
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10_000)
        try:
            topics = [t for t in admin.list_topics() if t.startswith(self.run_id)]
            if topics:
                admin.delete_topics(topics, timeout_ms=10_000)
            groups = [g["group_id"] for g in admin.list_groups() if str(g["group_id"]).startswith(self.run_id)]
            if groups:
                admin.delete_groups(groups)
            log(f"deleted {len(topics)} topics and {len(groups)} consumer groups named {self.run_id}*")
        finally:
            admin.close()

    def describe(self, broker_note: str) -> None:
        import kafka

        import replies

        self.meta = {
            "size": self.size,
            "sizes": asdict(self.sizes),
            "threads": THREADS,
            "broker": broker_note,
            "bootstrap": self.bootstrap,
            "run_id": self.run_id,
            "python": platform.python_version(),
            "kafka_python": kafka.__version__,
            "replies": getattr(replies, "__version__", "?"),
            "replies_commit": git_commit(),
            "machine": machine(),
            "command": " ".join(["python -m bench"] + sys.argv[1:]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        }


def git_commit() -> str:
    """The commit of the tree the benchmark runs from (whose ``replies/`` it measures)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "replies"], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return (out.stdout.strip() or "?") + (" (replies/ modified)" if dirty else "")


def machine() -> Dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError):
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) // 1024:,} MiB"
                break
    return {"cpus": os.cpu_count(), "cpu": model, "memory": memory,
            "system": f"{platform.system()} {platform.release()}", "load": os.getloadavg()}
