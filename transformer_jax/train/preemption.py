"""Stopping on a signal: finish the step, save, exit with a status that says "rerun"."""

from __future__ import annotations

import jax
import numpy as np


class Preempted(RuntimeError):
    """Training stopped on a termination signal after saving a checkpoint."""

    exit_code = 75  # EX_TEMPFAIL: rerun the same command to resume


class StopSignal:
    """Remembers SIGTERM/SIGINT so the loop can finish the step and save first."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == 2:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)

    def requested(self, step: int, sync: bool) -> bool:
        """Whether to save and stop after `step`. All hosts must agree.

        The runtime's preemption notice (TPU maintenance events) is already agreed
        across hosts; a signal seen by one host is shared only when `sync` (at log
        steps, where the host waits for the device anyway), so steps keep being
        dispatched ahead.
        """
        local = self.signum is not None
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        try:
            if multihost_utils.reached_preemption_sync_point(step):
                return True
        except Exception:  # no preemption service on this platform
            pass
        if not sync:
            return False
        flags = multihost_utils.process_allgather(np.asarray([local], np.int32))
        return bool(np.max(flags))
