"""Stopping on a signal: finish the step, save, exit with a status that says "rerun"."""

from __future__ import annotations


class Preempted(RuntimeError):
    """Training stopped on a termination signal after saving a checkpoint."""

    exit_code = 75  # EX_TEMPFAIL: rerun the same command to resume


class Terminated(BaseException):
    """SIGTERM outside a training step (start-up): stop at once, nothing half-written.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the
    way (e.g. around reading a checkpoint) mistakes it for a failure of its own.
    """

    exit_code = Preempted.exit_code


# The SIGTERM a `TerminateOnSignal` handled (None: none). Code run from C++ (e.g.
# SentencePiece's sentence iterator) may turn `Terminated` into another error or
# drop it; the CLI and `StopSignal` still see that the signal came.
_received: int | None = None


def signal_received() -> int | None:
    return _received


class TerminateOnSignal:
    """`with TerminateOnSignal():` SIGTERM raises `Terminated` in the main thread.

    Covers start-up (config, data preparation, restoring, compiling), where
    there is no step to finish; the training loop's `StopSignal` takes over while
    it runs and hands back when it ends. Files are written whole or not at all
    (atomic renames, Orbax's commit), so stopping anywhere here leaves a workdir
    the same command resumes from.
    """

    def __init__(self):
        self._installed = False
        self._old = None

    def __enter__(self):
        import os
        import signal
        import threading

        global _received
        _received = None
        if threading.current_thread() is threading.main_thread():
            pid = os.getpid()

            def handle(signum, frame):
                global _received
                if os.getpid() != pid:  # a forked child: die as it would have
                    signal.signal(signum, signal.SIG_DFL)
                    os.kill(os.getpid(), signum)
                    return
                _received = signum
                raise Terminated(signum)

            self._old = signal.signal(signal.SIGTERM, handle)
            self._installed = True
        return self

    def __exit__(self, *exc):
        import signal

        global _received
        _received = None
        if self._installed:
            signal.signal(signal.SIGTERM, self._old if self._old is not None else signal.SIG_DFL)
            self._installed = False


class StopSignal:
    """Remembers SIGTERM/SIGINT so the loop can finish the step and save first."""

    def __init__(self):
        # A SIGTERM of start-up that did not stop it (see `_received`) stops after one step.
        self.signum: int | None = _received
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
        import jax
        import numpy as np

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
