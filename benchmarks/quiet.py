"""Other processes' CPU while a benchmark measures: the machines here are shared, and a timing
taken while something else runs is not comparable with one taken alone.

    with ForeignCpu() as other:
        ...measure...
    other.core_seconds, other.peak, other.busiest   # CPU used outside this process tree

Every `interval_s` a helper process (this file run as a script) reads the CPU time of every
process outside the benchmark's process tree (children, such as servers and their workers, are
part of the benchmark). A process, not a thread: one pass over ~80 processes is ~10-15 ms of
Python, and from a thread of the benchmark it held the benchmark's GIL, so a measured call that
let the GIL go inside numpy waited for it (benchmarks/RESULTS.md, issue 19: most of LinUCB's
explore-stage p99).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from types import TracebackType

import psutil


class ForeignCpu:
    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.core_seconds = 0.0  # CPU time of other processes during the block
        self.peak = 0.0  # the most cores they used in one interval
        self.busiest = ""  # the process that used the most, at that peak
        self._helper: subprocess.Popen[str] | None = None

    def __enter__(self) -> ForeignCpu:
        self._helper = subprocess.Popen([sys.executable, __file__, str(os.getpid()), str(self.interval_s)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._helper.stdout is not None
        self._helper.stdout.readline()  # its baseline is read
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        assert self._helper is not None
        out, _ = self._helper.communicate("")  # closing its stdin ends the sampling
        self.core_seconds, self.peak, self.busiest = json.loads(out)


class _Sampler:
    """What `ForeignCpu`'s helper runs: reads every `interval_s` until its stdin closes."""

    def __init__(self, root: int, interval_s: float) -> None:
        self.root = root
        self.interval_s = interval_s
        self._seen: dict[int, float] = {}

    def run(self) -> None:
        self._read()  # baseline
        print("ready", flush=True)
        core_seconds, peak, busiest = 0.0, 0.0, ""
        while not select.select([sys.stdin], [], [], self.interval_s)[0]:
            used, top = self._read()
            core_seconds += used
            if used / self.interval_s > peak:
                peak, busiest = used / self.interval_s, top
        print(json.dumps([core_seconds, peak, busiest]))

    def _read(self) -> tuple[float, str]:
        """CPU seconds other processes used since the last read, and the busiest one's name."""
        root = psutil.Process(self.root)
        ours = {root.pid} | {child.pid for child in root.children(recursive=True)}  # this helper too
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


if __name__ == "__main__":
    _Sampler(int(sys.argv[1]), float(sys.argv[2])).run()
