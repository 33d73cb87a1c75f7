"""Starting a run as one of several processes, on `jax.distributed`.

One command runs everywhere: on a laptop it is one process; started by `srun` (SLURM), `mpirun`
(Open MPI) or on every host of a Cloud TPU pod, each process calls `jax.distributed.initialize()`
and JAX reads the coordinator, the process count and this process's id from the environment.
They can also be given explicitly (`--coordinator_address`, `--num_processes`, `--process_id`,
or the `JAX_COORDINATOR_ADDRESS` variable that `jax.distributed` reads), e.g. for two processes
on one machine. After that the run sees all devices of all processes (`parallel.py`).

`mode`: `auto` initialises only when something says this process is one of several (a launch
of one process, a one-task SLURM job included, runs exactly as without it); `on` always
initialises (JAX's own detection, or the explicit values); `off` never.

What goes wrong is one line of ours, in bounded time. JAX's own reactions are a silent wait
(5 minutes at start) and then `LOG(FATAL)`, a C++ abort with a stack dump that Python cannot
catch. So the start waits under our own deadline (`--distributed_timeout`, shorter than the one
given to JAX), says every few seconds what it waits for, and ends the process with one line when
it passes; a coordinator port already in use is found before JAX binds it (gRPC binds with
SO_REUSEPORT, so a second process 0 on the host would share the port and wait forever). Once
running, each process beats in the coordination service's key-value store and a watchdog thread
ends the run with one line and `EXIT_PEER_LOST` when another process stops beating (kill -9, a
lost host), well before JAX's heartbeat timeout aborts it, and also when this process is stuck
in a collective with the lost one. A process that ends with an error of its own puts it in its
beat, and the others end at once with its line and status (`fail`).

What JAX does itself: when process 0 (the coordinator) dies, the others' coordination clients
abort at once with JAX's fatal log; when a process registers with an id already registered (a
duplicate --process_id other than a second process 0 on one host), so do process 0 and the
first one with that id (the second then ends at the start's deadline, with our line).
`get_distributed_runtime_client` takes a `missed_heartbeat_callback` to call instead, but
jaxlib 0.10 cannot pass its `absl::Status` to a Python callable: the conversion throws
`std::bad_cast`, which ends the process just the same (with a worse message) from JAX's thread.
So `research.main` runs each process of a multi-process run under a small parent
(`supervisor.py`) that replaces that abort's log with one line of ours and a status that says
what to do.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import socket
import sys
import threading
import time

MODES = ("auto", "on", "off")
TIMEOUT_ENV = "RESEARCH_DISTRIBUTED_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 120  # a start waits this long for every process (JAX waits 300)
PROGRESS_SECONDS = 10  # how often a waiting start says what it waits for
PEER_TIMEOUT_SECONDS = 30  # a process silent this long is lost (JAX's heartbeat: 100 s)
PEER_TIMEOUT_ENV = "RESEARCH_DISTRIBUTED_PEER_TIMEOUT"
BEAT_SECONDS = 1.0
EXIT_PEER_LOST = 75  # = errors.EXIT_INTERRUPTED: rerun the same command to resume
_HEARTBEAT_KEY = "research/heartbeat/"
_FAILED = "failed"  # a beat value "failed <status> <line>": that process ended with an error
_LEFT = "left"  # a beat value: that process has read another's failure and ended
LEAVE_SECONDS = 10  # how long a failing process 0 keeps its coordinator up for the others
FINISH_SECONDS = 10  # how long the exit waits for the watchdog to leave a coordinator call
_watch: "PeerWatch | None" = None


class DistributedError(RuntimeError):
  """A multi-process launch that cannot start; the message says what is missing."""


def detected_launch() -> str | None:
  """The launcher of a multi-process run this process belongs to, or None."""
  if all(v in os.environ for v in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
                                   "SLURM_PROCID", "SLURM_LOCALID")):
    if int(os.environ["SLURM_NTASKS"]) > 1:
      return f"SLURM ({os.environ['SLURM_NTASKS']} tasks)"
    return None
  if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return f"Open MPI ({os.environ['OMPI_COMM_WORLD_SIZE']} ranks)"
  try:  # JAX's own test for a Cloud TPU VM (an environment check, no network)
    from jax._src.cloud_tpu_init import running_in_cloud_tpu_vm
  except ImportError:
    return None
  return "Cloud TPU" if running_in_cloud_tpu_vm else None


def start_timeout(seconds: int | None = None) -> int:
  """The start's deadline: `seconds` (the flag), else $RESEARCH_DISTRIBUTED_TIMEOUT, else the
  default."""
  if seconds is None:
    value = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_SECONDS))
    try:
      seconds = int(value)
    except ValueError:
      raise DistributedError(f"{TIMEOUT_ENV}={value!r} is not a whole number of seconds")
  if seconds <= 0:
    raise DistributedError(f"--distributed_timeout={seconds}: give a positive number of seconds")
  return seconds


def peer_timeout() -> float:
  """Seconds another process may stay silent: $RESEARCH_DISTRIBUTED_PEER_TIMEOUT or the
  default (longer for hosts that stall, shorter in tests; JAX's own heartbeat timeout, after
  which it aborts, is 100 s)."""
  value = os.environ.get(PEER_TIMEOUT_ENV, str(PEER_TIMEOUT_SECONDS))
  try:
    seconds = float(value)
  except ValueError:
    seconds = 0
  if not 0 < seconds < 100:
    raise DistributedError(f"{PEER_TIMEOUT_ENV}={value!r}: give seconds between 0 and 100")
  return seconds


def check_port_free(coordinator_address: str) -> None:
  """Process 0 is about to start the coordinator on `coordinator_address`'s port: refuses one
  that something on this host already listens on (a plain bind fails where gRPC's, with
  SO_REUSEPORT, would share the port with another coordinator and wait forever)."""
  port = int(coordinator_address.rsplit(":", 1)[1])
  family, address = ((socket.AF_INET6, ("::", port)) if socket.has_ipv6
                     else (socket.AF_INET, ("0.0.0.0", port)))
  try:
    sock = socket.socket(family, socket.SOCK_STREAM)
  except OSError:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    address = ("0.0.0.0", port)
  with sock:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed run's TIME_WAIT is fine
    if sock.family == socket.AF_INET6:
      sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
      sock.bind(address)
    except OSError as e:
      if e.errno != errno.EADDRINUSE:
        return  # an address this check cannot use (no IPv6, ...): JAX's own bind will tell
      raise DistributedError(
          f"port {port} of --coordinator_address={coordinator_address} is already in use on "
          "this host (process 0 starts the coordinator there): another run or program listens "
          "on it, or another process was started with --process_id=0 (each process needs its "
          "own id); choose another port") from e


def _answers(address: str) -> bool:
  """Whether something accepts TCP connections at host:port."""
  host, port = address.rsplit(":", 1)
  try:
    with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
      return True
  except (OSError, ValueError):
    return False


class _StartWatch:
  """While `jax.distributed.initialize` waits for the others: says every PROGRESS_SECONDS (less
  for a short timeout) what it waits for, and at `timeout` ends the process with one line
  (exit 2); JAX's own deadline, later, would abort with a stack dump."""

  def __init__(self, address: str | None, processes: int | None, process_id: int | None,
               timeout: int):
    self.address, self.processes, self.process_id = address, processes, process_id
    self.timeout, self.started = timeout, time.monotonic()
    self.every = min(PROGRESS_SECONDS, max(1, timeout // 3))
    self.coordinator_answered = False
    self._done = threading.Event()
    self._thread = threading.Thread(target=self._run, name="distributed-start", daemon=True)

  def __enter__(self) -> "_StartWatch":
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._done.set()

  def _others(self) -> str:
    if self.processes is None:
      return "the other processes"
    return ("the other process" if self.processes == 2
            else f"the other {self.processes - 1} processes")

  def waiting_for(self) -> str:
    where = f" at {self.address}" if self.address else ""
    if self.process_id == 0:
      return f"{self._others()} to join this process's coordinator{where}"
    if self.address:
      self.coordinator_answered = self.coordinator_answered or _answers(self.address)
      if not self.coordinator_answered:
        return f"the coordinator{where} (process 0) to answer"
    return f"{self._others()} to join the coordinator{where}"

  def failure(self) -> str:
    who = "" if self.process_id is None else f"process {self.process_id}: "
    ids = ("each with its own --process_id" if self.processes is None
           else f"each with its own --process_id 0..{self.processes - 1}")
    longer = f"a slow cluster may need more: --distributed_timeout or {TIMEOUT_ENV}"
    if self.process_id != 0 and self.address and not self.coordinator_answered:
      return (f"{who}the coordinator at {self.address} did not answer within {self.timeout} s: "
              f"start process 0 there, or check the address and the network ({longer})")
    everyone = "all processes" if self.processes is None else f"all {self.processes} processes"
    return (f"{who}not {everyone} joined within {self.timeout} s: start every one, {ids} "
            f"({longer})")

  def _run(self) -> None:
    while not self._done.wait(min(self.every, self.started + self.timeout - time.monotonic())):
      waited = time.monotonic() - self.started
      if waited >= self.timeout:
        self.waiting_for()
        _exit_with(self.failure(), 2)
      logging.warning("jax.distributed: waiting for %s (%.0f s of %d s)", self.waiting_for(),
                      waited, self.timeout)


_exiting = threading.Lock()


def _exit_with(message: str, code: int) -> None:
  """Ends the process from any thread with one line: JAX's runtime may hold the main thread in
  C++, and its exit handlers would wait on the processes that are missing. A second caller
  waits for the first to end the process."""
  if not _exiting.acquire(blocking=False):
    while True:
      time.sleep(60)
  for handler in logging.getLogger().handlers:
    handler.flush()
  sys.stdout.flush()
  print(f"error: {message}", file=sys.stderr, flush=True)
  os._exit(code)


def _finish_watch() -> None:
  """At exit: runs JAX's exit handler now (the backends cleared, then the distributed runtime
  shut down: a barrier with the other processes), the watchdog beating meanwhile, then ends the
  watchdog's thread (`PeerWatch.finish`). JAX's own registration of that handler, which runs
  later, then finds nothing left to do. A thread stuck in a call past FINISH_SECONDS (a
  coordinator gone mid-call) would abort the interpreter's finalization: the process ends now
  instead, with the status it was ending with (`note_exit_status`), its output flushed."""
  if _watch is None:
    return
  _watch.exiting = True
  from jax._src import api as jax_api
  jax_api.clean_up()
  if _watch.finish():
    return
  for handler in logging.getLogger().handlers:
    handler.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(_exit_status)


_exit_status = 0  # the status this process is ending with (`note_exit_status`)


def note_exit_status(status: int) -> None:
  """The status the process is about to exit with: `_finish_watch` ends it so if it must."""
  global _exit_status
  _exit_status = status


def _forget_failed_start() -> None:
  """After a failed start, drops JAX's half-started runtime so that its exit handler does not
  wait on it or print a traceback."""
  from jax._src import distributed as jax_distributed
  state = jax_distributed.global_state
  for name in ("preemption_sync_manager", "client", "service"):
    try:
      if getattr(state, name, None) is not None:
        getattr(state, name).shutdown()
    except Exception:  # pylint: disable=broad-except
      pass
    setattr(state, name, None)


class PeerWatch:
  """Each process sets its beat counter in the coordination service's key-value store every
  BEAT_SECONDS and reads the others'. A process whose counter stays still for `timeout` seconds,
  or a coordinator that stops answering, ends this one with one line and EXIT_PEER_LOST (from a
  thread: the main one may be stuck in a collective with the lost process). An exception that
  reaches the top level (a collective that failed because its peer died) waits for the verdict
  before it is printed. From the process's own exit on it only beats: the others may still be
  finishing their part, and JAX's exit handler waits for them.

  A process that ends with an error of its own (`fail`) says so in its beat instead: the others
  would otherwise wait in their next collective until JAX gives up, and then call it lost (75, a
  requeue that fails again). They end at once with its line and its status.

  Once JAX's exit handler is done, `finish` stops the beats and waits for the thread to leave
  its call into the coordination client: a daemon thread still in that C++ call when the
  interpreter finalizes is unwound by force as it retakes the GIL, which aborts the process
  ("FATAL: exception not rethrown", status -6) after its last line."""

  def __init__(self, client, process_id: int, processes: int, timeout: float):
    self.client, self.process_id, self.processes = client, process_id, processes
    self.timeout = timeout
    self.exiting = False
    self.lost: str | None = None
    self.status = EXIT_PEER_LOST  # what `lost` ends this process with
    self.failed = False  # this process has announced its own failure: no more beats
    self._store = threading.Lock()  # a beat and the failure, never one over the other
    now = time.monotonic()
    self.last_change = {i: now for i in range(processes) if i != process_id}
    self.last_value: dict[int, str] = {}
    self._beat = 0
    self._finished = threading.Event()
    self._checked = threading.Condition()
    self._thread = threading.Thread(target=self._run, name="distributed-peers", daemon=True)

  def start(self) -> "PeerWatch":
    self._previous_hook = sys.excepthook
    sys.excepthook = self._excepthook
    self._thread.start()
    return self

  def check(self, now: float) -> str | None:
    """One beat: sets this process's counter, reads the others'; what was lost, or None."""
    self._beat += 1
    try:
      with self._store:
        if not self.failed:
          self.client.key_value_set(f"{_HEARTBEAT_KEY}{self.process_id}", str(self._beat),
                                    allow_overwrite=True)
      beats = dict(self.client.key_value_dir_get(_HEARTBEAT_KEY))
    except Exception as e:  # pylint: disable=broad-except
      if self.process_id == 0:
        return f"the coordination service stopped working ({' '.join(str(e).split())[:200]})"
      return "the coordinator (process 0) stopped answering (killed?)"
    for peer in self.last_change:
      value = beats.get(f"{_HEARTBEAT_KEY}{peer}")
      if value and value.startswith(_FAILED) and not self.failed:
        _, status, line = value.split(" ", 2)
        self.status = int(status)
        return f"process {peer} failed: {line}"
      if value != self.last_value.get(peer):
        self.last_value[peer], self.last_change[peer] = value, now
    silent = [peer for peer, seen in self.last_change.items() if now - seen > self.timeout]
    if silent:
      names = ", ".join(map(str, silent))
      return (f"process{'es' * (len(silent) > 1)} {names} stopped responding for "
              f"{self.timeout:g} s (killed?)")
    return None

  def _run(self) -> None:
    while not self._finished.is_set():
      lost = self.check(time.monotonic())
      if self.exiting:  # beats on while JAX's exit handler waits for the others to finish
        self._finished.wait(BEAT_SECONDS)
        continue
      with self._checked:
        self.lost = lost
        self._checked.notify_all()
      if lost:
        self._stop_run()
      self._finished.wait(BEAT_SECONDS)

  def finish(self, timeout: float = FINISH_SECONDS) -> bool:
    """Stops the beats and waits at most `timeout` seconds for the thread to end (it may be in
    a call to the coordination client); whether it ended."""
    self._finished.set()
    if self._thread.is_alive():
      self._thread.join(timeout)
    return not self._thread.is_alive()

  def _stop_run(self) -> None:
    if self.status != EXIT_PEER_LOST:  # another process failed: its status, its line
      try:
        self.client.key_value_set(f"{_HEARTBEAT_KEY}{self.process_id}", _LEFT,
                                  allow_overwrite=True)
      except Exception:  # pylint: disable=broad-except
        pass
      _exit_with(f"{self.lost}; the run stops", self.status)
    else:
      _exit_with(f"{self.lost}: the run stops; rerun the same command on all processes to "
                 "resume from the last checkpoint", EXIT_PEER_LOST)

  def fail(self, message: str, status: int) -> None:
    """This process ends with `message` (its error line) and `status`: tells the others, and as
    process 0 (whose coordination service they read it from) waits until each has left or gone
    silent, at most LEAVE_SECONDS."""
    line = " ".join(message.split())
    with self._store:
      self.failed = True
      try:
        self.client.key_value_set(f"{_HEARTBEAT_KEY}{self.process_id}",
                                  f"{_FAILED} {status} {line}", allow_overwrite=True)
      except Exception:  # pylint: disable=broad-except
        return  # no coordinator to tell
    if self.process_id != 0:
      return
    deadline = time.monotonic() + LEAVE_SECONDS
    while time.monotonic() < deadline:
      try:
        beats = dict(self.client.key_value_dir_get(_HEARTBEAT_KEY))
      except Exception:  # pylint: disable=broad-except
        return
      values = [beats.get(f"{_HEARTBEAT_KEY}{peer}", "") for peer in self.last_change]
      if all(v == _LEFT or v.startswith(_FAILED) for v in values):
        return
      time.sleep(BEAT_SECONDS / 4)

  def _excepthook(self, kind, value, traceback) -> None:
    """An error in the main thread may be a collective whose peer died: the verdict (lost, or
    every peer seen beating after the error) comes before the traceback."""
    if not issubclass(kind, KeyboardInterrupt):
      raised = time.monotonic()
      with self._checked:
        self._checked.wait_for(
            lambda: self.lost or all(seen > raised for seen in self.last_change.values()),
            timeout=self.timeout + 5 * BEAT_SECONDS)
      if self.lost:
        self._stop_run()
    self._previous_hook(kind, value, traceback)
    if not issubclass(kind, KeyboardInterrupt):  # its traceback is printed: now the others
      line = f"{kind.__name__}: {' '.join(str(value).split())[:300]}"
      self.fail(line, 1)
      _exit_with(line, 1)  # JAX's exit handler would wait at a barrier for the others


def wanted(mode: str, coordinator_address: str | None = None, num_processes: int | None = None,
           process_id: int | None = None) -> bool:
  """Whether `initialize` with these arguments would start the runtime (or fail trying)."""
  if mode == "off":
    return False
  explicit = (coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS"), num_processes,
              process_id)
  return mode != "auto" or detected_launch() is not None or explicit != (None, None, None)


def fail(message: str, status: int) -> None:
  """Ends this process with `error: <message>` and `status`, first telling the other processes
  of a multi-process run (`PeerWatch.fail`), so that they end at once with the same line rather
  than wait for this one in a collective. Returns only in a single-process run."""
  if _watch is None:
    return
  for handler in logging.getLogger().handlers:
    handler.flush()
  sys.stdout.flush()
  print(f"error: {message}", file=sys.stderr, flush=True)
  _watch.fail(message, status)
  os._exit(status)  # JAX's exit handler would wait at a barrier for the others


def initialize(mode: str = "auto", *, coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               timeout_seconds: int | None = None) -> str | None:
  """Calls `jax.distributed.initialize` if this process is one of several (see `mode`), waiting
  at most `timeout_seconds` (`start_timeout`) for the others, and starts the `PeerWatch`.

  Must run before anything touches a JAX backend. Returns a line describing the runtime
  started, or None when the run is a single process.
  """
  if mode not in MODES:
    raise DistributedError(f"--distributed={mode!r} is not one of {MODES}")
  if not wanted(mode, coordinator_address, num_processes, process_id):
    return None
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  explicit = (coordinator_address, num_processes, process_id)
  launch = detected_launch()
  timeout, silence = start_timeout(timeout_seconds), peer_timeout()
  import jax
  from jax._src import distributed as jax_distributed
  if launch is None and None in explicit and mode == "auto":
    missing = [name for name, value in zip(
        ("--coordinator_address", "--num_processes", "--process_id"), explicit) if value is None]
    raise DistributedError(f"a multi-process run needs {', '.join(missing)} as well (or a "
                           "launcher JAX detects: SLURM, Open MPI, Cloud TPU)")
  if process_id == 0 and coordinator_address and ":" in coordinator_address:
    check_port_free(coordinator_address)
  watch = _StartWatch(coordinator_address, num_processes, process_id, timeout)
  try:
    with watch:
      # JAX's deadline comes after ours, which ends the process with a line of ours.
      jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                 initialization_timeout=timeout + 30)
  except (RuntimeError, ValueError) as e:
    _forget_failed_start()
    reason = " ".join(str(e).split())
    raise DistributedError(f"jax.distributed.initialize failed ({launch or 'explicit'}): "
                           f"{reason}") from e
  global _watch
  _watch = PeerWatch(jax_distributed.global_state.client, jax.process_index(),
                     jax.process_count(), silence).start()
  atexit.register(_finish_watch)  # runs first of the exit handlers: registered last
  line = (f"process {jax.process_index()} of {jax.process_count()} ({launch or 'explicit'}); "
          f"{jax.device_count()} devices in all, {jax.local_device_count()} here")
  logging.info("jax.distributed: %s", line)
  return line
