"""Other processes' CPU while a benchmark measures: the machines here are shared, and a timing
taken while something else runs is not comparable with one taken alone.

    with ForeignCpu() as other:
        ...measure...
    other.core_seconds, other.peak, other.busiest   # CPU used outside this process tree

Every `interval_s` it reads the CPU time of every process outside this process's tree (children,
such as servers and their workers, are part of the benchmark).
"""

from __future__ import annotations

import threading
from types import TracebackType

import psutil


class ForeignCpu:
    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.core_seconds = 0.0  # CPU time of other processes during the block
        self.peak = 0.0  # the most cores they used in one interval
        self.busiest = ""  # the process that used the most, at that peak
        self._seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="foreign-cpu", daemon=True)

    def __enter__(self) -> ForeignCpu:
        self._read()  # baseline
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            used, busiest = self._read()
            self.core_seconds += used
            if used / self.interval_s > self.peak:
                self.peak, self.busiest = used / self.interval_s, busiest

    def _read(self) -> tuple[float, str]:
        """CPU seconds other processes used since the last read, and the busiest one's name."""
        me = psutil.Process()
        ours = {me.pid} | {child.pid for child in me.children(recursive=True)}
        used, top, busiest = 0.0, 0.0, ""
        for process in psutil.process_iter(["pid", "name"]):
            if process.pid in ours:
                continue
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            total = times.user + times.system
            delta = total - self._seen.get(process.pid, total)
            self._seen[process.pid] = total
            used += delta
            if delta > top:
                top, busiest = delta, process.info["name"] or str(process.pid)
        return used, busiest
