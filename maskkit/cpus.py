"""How many CPU threads a job should use: the cores it may run on, less those other work keeps busy.

On a shared machine a job that starts as many compute threads as there are cores thrashes: with another
job on the CPU, MTCNN's many small tensor ops (each a few ms) spend their time waiting for each other's
threads. Sizing to the free cores makes a busy machine slow a job down in proportion, not ten times.
`MASKKIT_THREADS=N` overrides the measurement.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

ENV_VAR = "MASKKIT_THREADS"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat (None where there is none)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(sample_s: float = 0.2) -> float:
    """Cores other work keeps busy right now: measured over `sample_s` from /proc/stat (this process idle
    meanwhile), else the 1-minute load average, which lags a minute behind."""
    import time

    first = _cpu_times()
    if first is not None:
        own = os.times()
        time.sleep(sample_s)
        second = _cpu_times()
        own_after = os.times()
        if second is not None and second[1] > first[1]:
            share = (second[0] - first[0]) / (second[1] - first[1])
            everyone = share * (os.cpu_count() or 1)
            mine = ((own_after.user - own.user) + (own_after.system - own.system)) / sample_s
            return max(0.0, everyone - mine)
    try:
        return max(0.0, os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def free_cores() -> int:
    """Threads to use: usable cores less those other work keeps busy, at least 1; MASKKIT_THREADS wins."""
    value = os.environ.get(ENV_VAR)
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            from .errors import InvalidInput

            raise InvalidInput(f"{ENV_VAR} must be a whole number of threads, got {value!r}") from None
    cores = usable_cores()
    others = busy_cores()
    return max(1, min(cores, int(cores - others + 0.5)))


@contextmanager
def compute_threads(n: int) -> Iterator[int]:
    """torch's and OpenCV's intra-op threads set to `n` for a block, restored after."""
    import torch

    try:
        import cv2
    except ImportError:  # pragma: no cover - OpenCV is a dependency
        cv2 = None
    before = torch.get_num_threads()
    before_cv = cv2.getNumThreads() if cv2 else None
    torch.set_num_threads(max(1, n))
    if cv2:
        cv2.setNumThreads(max(1, n))
    try:
        yield n
    finally:
        torch.set_num_threads(before)
        if cv2 and before_cv is not None:
            cv2.setNumThreads(before_cv)


def onnx_options(threads: int):
    """onnxruntime session options for `threads` intra-op threads, one inter-op thread and no spinning (idle
    threads that spin steal the cores other processes of a pass compute on), quiet logs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options
