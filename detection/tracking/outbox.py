"""Records leave the training thread: an `Outbox` sends them in order from a thread of its own and keeps what
the store does not take in a JSON-lines spool, sent first once the store answers again. It knows nothing of
MLflow: the tracker gives it the sending and the test of a refusal."""

import json
import logging
import queue
import threading
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional

log = logging.getLogger(__name__)


class StoreDown(RuntimeError):
    """The tracking store did not take a record for a reason of its own (unreachable, full, failing)."""


class Outbox:
    """Sends a run's records (plain dicts, see `MlflowTracker`) from a thread of its own, in order, so that
    training never waits on the store. A record the store refuses (`refused(error)`) is that record's
    problem: logged and counted. When the store fails otherwise, the record and those after it are
    appended to `spool` (JSON lines), and retried every `retry_s`; once the store answers, the spool is
    sent first, in order. `close()` waits while records still go out and spools what is left.

    Args:
        send: delivers one record; raises when it cannot.
        refused: whether an exception means the store answered and refused the record.
        spool: the JSON-lines file that keeps records the store did not take (None: they are counted lost).
        retry_s: while the store does not answer, records are spooled without a try for this long.
        where: the store's URI, for the log.
    """

    def __init__(self, send: Callable[[dict], None], *, refused: Callable[[BaseException], bool],
                 spool: Optional[Path], where: str, retry_s: float = 5.0):
        self.send, self.refused, self.spool, self.where, self.retry_s = send, refused, spool, where, retry_s
        self.counts = {"sent": Counter(), "spooled": Counter(), "refused": Counter(), "lost": Counter()}
        self.down: Optional[str] = None  # why the store does not answer, while it does not
        self._retry_at = 0.0
        self._queue: "queue.Queue[Optional[dict]]" = queue.Queue()
        self._lock = threading.Lock()  # the spool is written by the thread, and by close() on a timeout
        self._closed = False
        self._last_progress = time.monotonic()
        self._current: Optional[dict] = None  # the record being delivered
        self._thread = threading.Thread(target=self._run, name="tracking outbox", daemon=True)
        self._thread.start()

    def put(self, record: dict) -> None:
        self._queue.put(record)

    def _run(self) -> None:
        while (record := self._queue.get()) is not None:
            self._current = record
            self._deliver(record)
            self._current, self._last_progress = None, time.monotonic()

    def _deliver(self, record: dict) -> None:
        if self.down is not None and time.monotonic() < self._retry_at:
            self._keep([record])
            return
        try:
            if self.down is not None and self.spool is not None and self.spool.is_file():
                sent = replay_spool(self.spool, self._send, self._lock)  # back? the older records first
                log.warning("the MLflow store at %s answers again: %d kept records sent", self.where, sent)
            self._send(record)
            self.down = None
        except StoreDown as error:
            if self.down is None:
                log.error("the MLflow store at %s did not take a record (%s); training goes on, records are kept "
                          "in %s and sent when it answers", self.where, error, self.spool or "no file (none was given)")
            self.down, self._retry_at = str(error), time.monotonic() + self.retry_s
            self._keep([record])

    def _send(self, record: dict) -> None:
        """Sends one record; StoreDown when the store failed, nothing raised when it refused the record."""
        try:
            self.send(record)
        except Exception as error:
            if not self.refused(error):
                raise StoreDown(f"{type(error).__name__}: {error}") from error
            log.error("MLflow refused a %s record (the run goes on logging): %s", record["kind"], error)
            self.counts["refused"][record["kind"]] += record_size(record)
            return
        self.counts["sent"][record["kind"]] += record_size(record)

    def _keep(self, records: list[dict]) -> None:
        """Appends `records` to the spool (counted 'spooled'); without a spool, or one that cannot be written
        (a full disk), they are counted 'lost' and said so: nothing is dropped silently."""
        with self._lock:
            if self._closed and threading.current_thread() is self._thread:
                return  # close() has kept it already
            kept = "spooled"
            try:
                if self.spool is None:
                    raise OSError("no spool file was given")
                with open(self.spool, "a", encoding="utf-8") as file:
                    file.writelines(json.dumps(record) + "\n" for record in records)
            except OSError as error:
                kept = "lost"
                log.error("%d tracking records lost: they cannot be kept (%s)", len(records), error)
            for record in records:
                self.counts[kept][record["kind"]] += record_size(record)

    def close(self, stall_s: float = 10.0) -> None:
        """Sends what is queued, waiting as long as records keep going out (at most `stall_s` without one);
        what is left then (the store hangs) is kept in the spool, the record being sent included (it may
        then arrive twice: MLflow keeps one of two equal metric values, a tag or an artifact is the same)."""
        self._queue.put(None)
        closing = time.monotonic()
        while self._thread.is_alive() and time.monotonic() - max(self._last_progress, closing) < stall_s:
            self._thread.join(timeout=0.5)
        if self._thread.is_alive():
            left = []
            while not self._queue.empty():
                left.append(self._queue.get_nowait())
            with self._lock:
                self._closed = True
            log.error("the MLflow store at %s did not answer for %.0f s: %d records not sent", self.where, stall_s,
                      len([r for r in left if r is not None]) + 1)
            self._keep([record for record in [self._current, *left] if record is not None])


def record_size(record: dict) -> int:
    """How many values a record carries: a metrics record's count, else 1."""
    return len(record["metrics"]) if record["kind"] == "metrics" else 1


def read_records(path: Path) -> list[dict]:
    """The records of a JSON-lines spool file ([] when there is none)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_records(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


def replay_spool(path: Path, send: Callable[[dict], None], lock: Optional[threading.Lock] = None) -> int:
    """Sends the records kept in `path`, in order. They are moved to `<path>.sending` first (records kept
    meanwhile start a new `path`; a `.sending` file a process left when it died mid-replay goes first);
    when a send fails, the records not yet sent go back to the head of `path` and the error is raised.
    `lock` guards the files against a writer in another thread. Returns how many were sent."""
    path = Path(path)
    sending = path.with_name(f"{path.name}.sending")
    with lock or nullcontext():
        records = read_records(sending) + read_records(path)
        write_records(sending, records)
        path.unlink(missing_ok=True)
    for index, record in enumerate(records):
        try:
            send(record)
        except BaseException:
            with lock or nullcontext():
                write_records(path, records[index:] + read_records(path))
                sending.unlink()
            raise
    sending.unlink()
    return len(records)
