"""Multi-process (multi-host) start-up: one call before any other JAX work.

`initialize()` decides how this process joins a job:

* explicit arguments, or the environment variables ``TJAX_COORDINATOR``
  (``host:port`` of process 0), ``TJAX_NUM_PROCESSES`` and ``TJAX_PROCESS_ID``
  (what ``launch/local.py`` sets): ``jax.distributed.initialize`` with exactly
  those values;
* a Cloud TPU VM, or a SLURM ``srun`` step with more than one task:
  ``jax.distributed.initialize()`` with no arguments, which reads the
  topology itself;
* otherwise (one process, nothing set): nothing happens.

``TJAX_DISTRIBUTED=0`` turns the automatic (TPU / SLURM) detection off.
``TJAX_INIT_TIMEOUT``, when set, overrides ``timeout_s`` (seconds to wait for
the other processes).

With explicit settings, the processes first meet at the coordinator's port
over plain TCP before JAX's own runtime starts. The runtime aborts the whole
process (with a C++ stack trace) when a peer is missing; the check beforehand
turns the common failures -- coordinator not up, a process that never
started, a wrong process count -- into a one-line `DistributedInitError`
(a `RuntimeError`) naming the address, the process and the timeout.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence

import jax

log = logging.getLogger(__name__)

ENV_COORDINATOR = "TJAX_COORDINATOR"
ENV_NUM_PROCESSES = "TJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "TJAX_PROCESS_ID"
ENV_TIMEOUT = "TJAX_INIT_TIMEOUT"
ENV_AUTO = "TJAX_DISTRIBUTED"

_FALSE = ("0", "false", "no", "off")
_HELLO = b"tjax-hello"
_GO = b"tjax-go\n"

# How this process was set up: None until initialize() ran, then one of
# "explicit", "tpu", "slurm", "single" or "external" (someone else called
# jax.distributed.initialize first).
_mode: str | None = None


class DistributedInitError(RuntimeError):
    """This process could not join the multi-process job."""


# --------------------------------------------------------------------------- environment


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None


def _running_on_tpu_vm() -> bool:
    """True on a Cloud TPU VM (JAX looks for TPU chips when it is imported)."""
    try:
        from jax._src import cloud_tpu_init
    except ImportError:  # pragma: no cover - a future jax layout
        return False
    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def _slurm_tasks() -> int:
    """Number of tasks of this SLURM job (0 when not under SLURM)."""
    if "SLURM_JOB_ID" not in os.environ:
        return 0
    try:
        return int(os.environ.get("SLURM_NTASKS", "1"))
    except ValueError:
        return 0


def _in_srun_step() -> bool:
    """JAX's SLURM detection needs the per-task variables that `srun` sets."""
    return all(
        name in os.environ for name in ("SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")
    )


def _cpu_only() -> bool:
    """True when the backend this process will use is the host CPU."""
    platforms = (jax.config.jax_platforms or "").strip()
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    if _running_on_tpu_vm():
        return False
    return not any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd"))


def _use_cpu_collectives() -> None:
    # Cross-process computations on the CPU backend need a collectives
    # implementation, chosen before the backend is created.
    if _cpu_only():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"coordinator address {address!r} is not of the form host:port")
    return host.strip("[]"), int(port)


# --------------------------------------------------------------------------- rendezvous


def _rendezvous(address: str, num_processes: int, process_id: int, timeout_s: float) -> None:
    """Block until all processes have reached the coordinator, or raise."""
    host, port = _split_address(address)
    deadline = time.monotonic() + timeout_s
    who = f"process {process_id}/{num_processes}"
    if process_id == 0:
        _rendezvous_serve(port, num_processes, deadline, address, who, timeout_s)
    else:
        _rendezvous_join(host, port, num_processes, process_id, deadline, address, who, timeout_s)


def _listen(port: int) -> socket.socket:
    if socket.has_dualstack_ipv6():
        try:
            return socket.create_server(
                ("", port), family=socket.AF_INET6, dualstack_ipv6=True, reuse_port=False
            )
        except OSError:
            pass
    return socket.create_server(("", port))


def _rendezvous_serve(
    port: int, n: int, deadline: float, address: str, who: str, timeout_s: float
) -> None:
    try:
        server = _listen(port)
    except OSError as exc:
        raise DistributedInitError(
            f"coordinator {address} ({who}) cannot listen on port {port}: {exc.strerror or exc}"
        ) from None
    peers: dict[int, socket.socket] = {}
    try:
        with server:
            while len(peers) < n - 1:
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(set(range(1, n)) - set(peers))
                    raise DistributedInitError(
                        f"coordinator {address} ({who}): {len(peers) + 1} of {n} processes "
                        f"arrived within the {timeout_s:g}s timeout; missing process ids "
                        f"{missing}"
                    )
                server.settimeout(min(left, 1.0))
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                pid = _read_hello(conn, n, deadline)
                if pid is None or pid in peers:
                    conn.close()
                    continue
                peers[pid] = conn
        # The listening socket is closed: JAX's coordination service can bind the port.
        for conn in peers.values():
            try:
                conn.sendall(_GO)
            except OSError:
                pass
        # Let each peer close first so no connection lingers on the coordinator's port.
        for conn in peers.values():
            conn.settimeout(2.0)
            try:
                conn.recv(16)
            except OSError:
                pass
    finally:
        for conn in peers.values():
            conn.close()


def _read_hello(conn: socket.socket, n: int, deadline: float) -> int | None:
    conn.settimeout(max(0.1, min(5.0, deadline - time.monotonic())))
    try:
        data = b""
        while not data.endswith(b"\n") and len(data) < 64:
            chunk = conn.recv(64)
            if not chunk:
                break
            data += chunk
    except OSError:
        return None
    parts = data.split()
    if len(parts) != 3 or parts[0] != _HELLO:
        return None
    try:
        pid, count = int(parts[1]), int(parts[2])
    except ValueError:
        return None
    if count != n or not 0 < pid < n:
        msg = f"tjax-bad the coordinator expects {n} processes\n"
        try:
            conn.sendall(msg.encode())
        except OSError:
            pass
        return None
    return pid


def _rendezvous_join(
    host: str,
    port: int,
    n: int,
    pid: int,
    deadline: float,
    address: str,
    who: str,
    timeout_s: float,
) -> None:
    def fail(reason: str) -> DistributedInitError:
        return DistributedInitError(
            f"could not reach coordinator {address} as {who} within the {timeout_s:g}s "
            f"timeout ({reason})"
        )

    last = "no answer"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise fail(last)
        try:
            conn = socket.create_connection((host, port), timeout=min(left, 2.0))
        except OSError as exc:
            last = exc.strerror or str(exc) or type(exc).__name__
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
            continue
        with conn:
            try:
                conn.sendall(f"{_HELLO.decode()} {pid} {n}\n".encode())
                reply = b""
                while not reply.endswith(b"\n"):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise fail("the other processes did not all arrive")
                    conn.settimeout(min(left, 1.0))
                    try:
                        chunk = conn.recv(256)
                    except TimeoutError:
                        continue
                    if not chunk:
                        break
                    reply += chunk
            except OSError as exc:
                last = exc.strerror or str(exc)
                continue
        if reply == _GO:
            return
        if reply.startswith(b"tjax-bad"):
            reason = reply.decode(errors="replace").split(" ", 1)[1].strip()
            raise DistributedInitError(f"coordinator {address} rejected {who}: {reason}")
        # Closed without an answer: the coordinator gave up or was restarting; retry.
        last = "the coordinator closed the connection"
        time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))


# --------------------------------------------------------------------------- initialize


def _require_fresh_backend() -> None:
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise DistributedInitError(
            "distributed.initialize() must run before any JAX computation or device query "
            "(the backend is already initialized)"
        )


def _call_jax_initialize(kwargs: dict, where: str, who: str, timeout_s: int) -> None:
    _require_fresh_backend()
    try:
        jax.distributed.initialize(initialization_timeout=timeout_s, **kwargs)
    except (ValueError, TypeError):
        raise
    except Exception as exc:
        log.debug("jax.distributed.initialize failed", exc_info=True)
        text = " ".join(str(exc).split())
        raise DistributedInitError(
            f"could not join the distributed job via coordinator {where} as {who} "
            f"within the {timeout_s}s timeout: {text[:200]}"
        ) from None


def _log_topology() -> None:
    if log.isEnabledFor(logging.INFO):
        log.info("%s", describe())


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: int | Sequence[int] | None = None,
    timeout_s: int = 300,
) -> None:
    """Join the multi-process job this process belongs to, if any (see the module doc).

    Must run before any other JAX computation or device query. A second call is a no-op.
    """
    global _mode
    if _mode is not None:
        return
    if jax.distributed.is_initialized():
        _mode = "external"
        return

    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR, "").strip()
    if num_processes is None:
        num_processes = _env_int(ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _env_int(ENV_PROCESS_ID)
    env_timeout = _env_int(ENV_TIMEOUT)
    timeout_s = int(env_timeout if env_timeout is not None else timeout_s)

    settings = {
        ENV_COORDINATOR: coordinator_address or None,
        ENV_NUM_PROCESSES: num_processes,
        ENV_PROCESS_ID: process_id,
    }
    if any(v is not None for v in settings.values()):
        missing = [name for name, v in settings.items() if v is None]
        if missing:
            raise ValueError(
                "a multi-process run needs the coordinator address, the process count and "
                f"this process's id; missing: {', '.join(missing)}"
            )
        _split_address(coordinator_address)
        if not 0 <= process_id < num_processes:
            raise ValueError(
                f"process id {process_id} is out of range for {num_processes} processes"
            )
        who = f"process {process_id}/{num_processes}"
        _require_fresh_backend()
        if num_processes > 1:
            _rendezvous(coordinator_address, num_processes, process_id, timeout_s)
        _use_cpu_collectives()
        _call_jax_initialize(
            dict(
                coordinator_address=coordinator_address,
                num_processes=num_processes,
                process_id=process_id,
                local_device_ids=local_device_ids,
            ),
            coordinator_address,
            who,
            timeout_s,
        )
        _mode = "explicit"
        _log_topology()
        return

    auto = os.environ.get(ENV_AUTO, "1").strip().lower() not in _FALSE
    kwargs = {} if local_device_ids is None else {"local_device_ids": local_device_ids}
    if auto and _running_on_tpu_vm():
        _call_jax_initialize(kwargs, "(auto-detected)", "a TPU VM worker", timeout_s)
        _mode = "tpu"
        _log_topology()
        return
    tasks = _slurm_tasks()
    if auto and tasks > 1:
        if not _in_srun_step():
            log.warning(
                "SLURM job with %d tasks, but this process was not started by srun; "
                "running as a single process",
                tasks,
            )
            _mode = "single"
            return
        _use_cpu_collectives()
        who = f"process {os.environ.get('SLURM_PROCID', '?')}/{tasks}"
        _call_jax_initialize(kwargs, "(auto-detected)", who, timeout_s)
        _mode = "slurm"
        _log_topology()
        return
    _mode = "single"


def is_multihost() -> bool:
    """True when this job spans more than one process."""
    return jax.process_count() > 1


def describe() -> str:
    """One line: which process this is and which devices it sees."""
    local = jax.local_devices()
    kind = local[0].platform if local else "?"
    return (
        f"process {jax.process_index()} of {jax.process_count()}: "
        f"{len(local)} local / {jax.device_count()} global {kind} devices"
    )
