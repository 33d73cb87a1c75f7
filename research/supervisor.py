"""One process of a multi-process run, run under a small parent that keeps JAX's abort from being
the last word.

When the coordinator (process 0) dies, every other process's coordination client calls
`LOG(FATAL)` from a C++ thread: the process aborts at once with a stack dump, which no Python
handler can intercept (`distributed.py`). So `research.main`, when it is about to start
`jax.distributed`, runs its own command again as a child and only watches it:

* the child's stderr is relayed line by line, except C++ error and fatal log lines (`E1207 ...`,
  `F1207 ...`), which are held until the next ordinary line; from a fatal line on, everything
  (JAX's stack trace, Python's thread dump) is held;
* when the child dies of that abort, the held lines give way to one line of ours (all of them
  with --debug or RESEARCH_DEBUG=1) and the exit status says what to do: 75 (rerun to resume)
  when the coordinator stopped answering, 2 for another fatal error of the coordination service;
* every other ending is passed on as it is: the child's exit status, or the signal that killed
  it (the parent then dies of the same signal);
* SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 sent to the parent are passed to the child once
  (the child has its own process group, so a terminal's Ctrl-C reaches it through the parent
  only); on Linux the child is killed if the parent is (`PR_SET_PDEATHSIG`).

A single-process run has no parent: it runs as before.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys

ENV = "RESEARCH_SUPERVISOR_PID"  # set in the child: it is supervised (the parent's pid)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
EXIT_COORDINATOR_LOST = 75  # = errors.EXIT_INTERRUPTED: rerun the same command to resume
EXIT_FATAL = 2
_GLOG = re.compile(rb"^([EF])\d{4} \d\d:\d\d:\d\d")
_PROCESS = re.compile(rb"jax\.distributed: process (\d+) of (\d+)")
_STATUS = re.compile(r"absl::Status: ([A-Z_]+): ([^.\n]*)")


def supervised() -> bool:
  """Whether this process is the child of a supervisor."""
  return ENV in os.environ


def die_with_parent() -> None:
  """In the child, before it runs: SIGKILL when the parent dies (Linux), as kill -9 of the
  parent would otherwise leave the run going without it."""
  try:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


class _Relay:
  """The child's stderr, passed on line by line, with JAX's C++ error and fatal lines held."""

  def __init__(self, out: int):
    self.out, self.partial, self.held = out, b"", []
    self.fatal: bytes | None = None  # the first fatal line
    self.process: str | None = None

  def feed(self, data: bytes) -> None:
    lines = (self.partial + data).split(b"\n")
    self.partial = lines.pop()
    for line in lines:
      self._line(line + b"\n")

  def close(self) -> None:
    if self.partial:
      self._line(self.partial)
      self.partial = b""

  def _line(self, line: bytes) -> None:
    if self.process is None and (match := _PROCESS.search(line)):
      self.process = match.group(1).decode()
    glog = _GLOG.match(line)
    if self.fatal is not None or glog:
      self.held.append(line)
      if glog and glog.group(1) == b"F" and self.fatal is None:
        self.fatal = line
      return
    self.release()
    self._write(line)

  def release(self) -> None:
    """Passes the held lines on (the child went on after an error line, or they explain an
    ending that is not ours to summarise)."""
    for line in self.held:
      self._write(line)
    self.held = []

  def _write(self, data: bytes) -> None:
    while data:
      try:
        data = data[os.write(self.out, data):]
      except InterruptedError:
        continue
      except OSError:  # the reader of our stderr is gone: nothing more to tell
        return


def verdict(fatal: bytes, process: str | None) -> tuple[str, int]:
  """Our line, and the exit status, for a child that JAX aborted after the fatal log line
  `fatal` (and the lines after it)."""
  text = fatal.decode("utf-8", "replace")
  who = f"process {process}: " if process is not None else ""
  if "JAX distributed service" not in text and "coordination service" not in text.lower():
    first = " ".join(text.split()[4:])[:300]  # without the log line's prefix
    return f"{who}JAX ended this process: {first}", EXIT_FATAL
  status = _STATUS.search(text)
  if status is None or status.group(1) == "UNAVAILABLE":
    return (f"{who}the coordinator (process 0) stopped answering (killed?) and JAX ended this "
            "process: the run stops; rerun the same command on all processes to resume from "
            "the last checkpoint", EXIT_COORDINATOR_LOST)
  reason = f"{status.group(1)}: {status.group(2).strip()}"
  if "different incarnation" in reason:  # a second process registered with a taken id
    return (f"{who}the JAX coordination service ended this process ({reason}): two processes "
            "were given the same --process_id (each needs its own); start them again",
            EXIT_FATAL)
  return f"{who}the JAX coordination service ended this process ({reason})", EXIT_FATAL


def run(command: list[str], *, debug: bool = False) -> int:
  """Runs `command` as the supervised child (this package first on its path) and returns the
  status to exit with (after it ended by a signal that is not JAX's abort, this process dies of
  the same signal)."""
  package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, **{ENV: str(os.getpid())})
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
  child = subprocess.Popen(command, env=env,
                           stderr=subprocess.PIPE, process_group=0,
                           preexec_fn=die_with_parent if sys.platform == "linux" else None)

  def forward(number, frame) -> None:
    try:
      child.send_signal(number)
    except ProcessLookupError:
      pass

  previous = {number: signal.signal(number, forward) for number in FORWARDED}
  relay = _Relay(sys.stderr.fileno())
  sys.stderr.flush()
  pipe = child.stderr.fileno()
  with selectors.DefaultSelector() as selector:
    selector.register(pipe, selectors.EVENT_READ)
    while True:
      # A grandchild may hold the pipe open after the child has ended: the ending decides.
      ready = selector.select(timeout=0.5)
      data = os.read(pipe, 65536) if ready else b""
      if data:
        relay.feed(data)
      elif ready or child.poll() is not None:
        break
  code = child.wait()
  os.set_blocking(pipe, False)
  try:
    while data := os.read(pipe, 65536):  # what it wrote just before it ended
      relay.feed(data)
  except BlockingIOError:
    pass
  relay.close()
  child.stderr.close()
  for number, handler in previous.items():
    signal.signal(number, handler)
  if code == -signal.SIGABRT and relay.fatal is not None:
    message, status = verdict(relay.fatal, relay.process)
    if debug:
      relay.release()
    relay.held = []
    relay._write(f"error: {message}\n".encode())
    return status
  relay.release()
  if code < 0:  # the launcher sees the same ending as without a supervisor
    if -code != signal.SIGKILL:
      signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
    return 128 - code  # a signal whose default is not to end a process
  return code
