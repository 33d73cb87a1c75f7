"""Several processes on `jax.distributed`: two local processes x 2 CPU devices (gloo collectives,
a localhost coordinator) against one process x 4 devices, and their stops and restarts.

Each run is the tiny SST-2 config (`tests/helpers.py`), dropout on, with one length bucket so
that each process compiles one train and one eval program, and an odd-sized eval split (51
examples: the last eval batch is mostly padding, and process 1's half of it is all padding).

Tolerance between one process and two: the gradient all-reduce sums the 4 devices' parts in
another order over gloo than within one process, so float32 sums differ in their last bits
(parameters by ~1e-8, losses by ~1e-7 after 24 steps); 1e-6 is far below what a wrong split
would give (a batch counted twice, a device's masks repeated: differences of 1e-3 and more).
Between two runs with the same layout, and a resumed run and an uninterrupted one, nothing may
differ at all.
"""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from conftest import REPO, require_data
from helpers import final_state, tiny_config, train_losses
from research import distributed, errors, train
from research.models import builder

OVERRIDES = {"data.eval_examples": 51, "data.max_length": 64, "data.length_buckets": (64,),
             "parallel.num_devices": 0}


@pytest.fixture(autouse=True)
def _needs_sst2():
  require_data("sst2")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _cli_overrides(backend: str, overrides: dict | None = None) -> list[str]:
  values = dict(OVERRIDES, **{"parallel.backend": backend}, **(overrides or {}))
  return [f"--config.{k}={v}" for k, v in values.items()]


class Launch:
  """`processes` copies of `python -m research.main` on `workdir`, `devices` CPU devices each;
  output in `<workdir>.p<i>.log`. `how`: 'flags' (--coordinator_address, ...) or 'slurm' (the
  variables srun sets, with the coordinator on localhost). `overrides`: more config fields."""

  def __init__(self, workdir: pathlib.Path, backend: str, *, processes=2, devices=2,
               how="flags", pause: str | None = None, env: dict[str, str] | None = None,
               overrides: dict | None = None):
    self.logs = [pathlib.Path(f"{workdir}.p{i}.log") for i in range(processes)]
    port = _free_port()
    self.procs, extra_env = [], env or {}
    for i in range(processes):
      env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
      env.pop(train.PAUSE_ENV, None)
      if pause:
        env[train.PAUSE_ENV] = pause
      env.update(extra_env)
      args = [sys.executable, "-m", "research.main", "--config", "tests/helpers.py",
              "--workdir", str(workdir), *_cli_overrides(backend, overrides)]
      if processes > 1 and how == "flags":
        args += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
                 f"--process_id={i}"]
      elif processes > 1:
        env.update(SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="localhost",
                   SLURM_NTASKS=str(processes), SLURM_PROCID=str(i), SLURM_LOCALID=str(i),
                   SLURM_STEP_NUM_NODES="1", JAX_COORDINATOR_PORT=str(port))
      with self.logs[i].open("w") as log:
        self.procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=log,
                                           stderr=subprocess.STDOUT))

  def wait(self, timeout=300) -> list[int]:
    codes = [p.wait(timeout=timeout) for p in self.procs]
    return codes

  def signal(self, number, which=None):
    for i, p in enumerate(self.procs):
      if which is None or i in which:
        p.send_signal(number)

  def output(self, i=0) -> str:
    return self.logs[i].read_text()


def _wait_for(paths, timeout=240):
  deadline = time.monotonic() + timeout
  while not all(pathlib.Path(p).exists() for p in paths):
    if time.monotonic() > deadline:
      raise TimeoutError(f"no {paths}")
    time.sleep(0.05)


def _max_difference(a, b) -> float:
  flat_a, flat_b = jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])
  assert len(flat_a) == len(flat_b) > 0
  return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(flat_a, flat_b))


def _rows(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _assert_written_once(workdir):
  """Process 0 alone wrote the run's files: no line twice, no leftover temporary file."""
  rows = _rows(workdir)
  keys = [(r["step"], r["split"]) for r in rows]
  assert len(keys) == len(set(keys)) == 24 + 2
  log = (workdir / "train.log").read_text()
  assert log.count("done:") == 1 and log.count("eval validation at step 12") == 1
  assert not list(workdir.rglob(".*.tmp"))


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
  """For each backend, an uninterrupted two-process run (pmap started with explicit flags,
  shard_map by SLURM's variables), and the one-process reference both are compared with: the
  same config in this process over 4 devices with pmap (within one process the two backends
  compute the same update: tests/test_parallel.py)."""
  require_data("sst2")  # module fixtures come before the autouse skip
  root = tmp_path_factory.mktemp("runs")
  launches = {"pmap": Launch(root / "pmap", "pmap", how="flags")}
  single = train.train_and_evaluate(tiny_config(**OVERRIDES, **{"parallel.backend": "pmap"}),
                                    root / "one")  # while the two processes run
  assert launches["pmap"].wait() == [0, 0], launches["pmap"].output()
  launches["shard_map"] = Launch(root / "shard_map", "shard_map", how="slurm")
  assert launches["shard_map"].wait() == [0, 0], launches["shard_map"].output()
  return {backend: (root / backend, root / "one", single, launch)
          for backend, launch in launches.items()}


@pytest.mark.parametrize("backend", ["pmap", "shard_map"])
def test_two_processes_train_what_one_process_with_four_devices_trains(two_process_runs,
                                                                       backend):
  two, one, single, launch = two_process_runs[backend]
  step_two, state_two = final_state(two)
  step_one, state_one = final_state(one)
  assert step_two == step_one == 24
  assert _max_difference(state_two, state_one) < 1e-6
  assert _max_difference(state_one, jax.device_get(
      {"params": builder.init_params(builder.build_model(tiny_config()),
                                   train.seed_keys(0)[0])})) > 1e-4  # the runs did train
  losses_two, losses_one = train_losses(two), train_losses(one)
  assert sorted(losses_two) == list(range(1, 25))
  np.testing.assert_allclose([losses_two[s] for s in range(1, 25)],
                             [losses_one[s] for s in range(1, 25)], rtol=1e-6)
  results = json.loads((two / "results.json").read_text())
  assert results["processes"] == 2 and results["devices"] == 4
  assert results["compiles"] == {"train_step": 1, "update_step": 1, "eval_step": 1}
  for split_metrics_two, split_metrics_one in zip(
      results["final"]["results"]["validation"].values(),
      single["final"]["results"]["validation"].values()):
    assert split_metrics_two == pytest.approx(split_metrics_one, rel=1e-6)
  for step in (12, 24):  # every example of the odd-sized split scored exactly once
    report = json.loads((two / "eval" / f"validation_step{step}.json").read_text())
    assert report["report"]["macro avg"]["support"] == 51
  _assert_written_once(two)
  if backend == "shard_map":  # started by the SLURM variables, which JAX read
    assert "jax.distributed: process 0 of 2 (SLURM (2 tasks))" in launch.output(0)


def test_sigterm_during_evaluation_then_kill_9_then_restart_end_as_the_uninterrupted_run(
    two_process_runs, tmp_path):
  """A preempted job, requeued, then killed: SIGTERM to one process while step 12 is evaluated
  (say, a maintenance event on one host) stops both after that evaluation, at its checkpoint,
  with the documented exit code; the same command resumes, process 1 is killed -9 at step 18
  (process 0 notices its silence and stops with one line and 75), then process 0 at step 16
  (process 1 ends at once, with one line and 75), and once restarted the run ends as the
  uninterrupted one, bit for bit."""
  reference = two_process_runs["pmap"][0]
  workdir, marker = tmp_path / "run", tmp_path / "paused"
  launch = Launch(workdir, "pmap", pause=f"eval:12:{marker}")
  _wait_for([f"{marker}.0", f"{marker}.1"])
  launch.signal(signal.SIGTERM, which=[1])
  pathlib.Path(f"{marker}.release").touch()
  assert launch.wait() == [errors.EXIT_INTERRUPTED] * 2
  for i in (0, 1):
    last = launch.output(i).strip().splitlines()[-1]
    assert last.startswith("error: stopped by") and "at step 12 of 24" in last, last
  assert "Traceback" not in launch.output(0) + launch.output(1)
  assert final_state(workdir)[0] == 12  # at the evaluation, which was completed
  assert (workdir / "eval" / "validation_step12.json").exists()
  assert not (workdir / "results.json").exists()
  # The checkpoint also resumes in one process over the same 4 devices (within the tolerance
  # of the all-reduce order).
  shutil.copytree(workdir, tmp_path / "in_one_process")
  train.train_and_evaluate(tiny_config(**OVERRIDES, **{"parallel.backend": "pmap"}),
                           tmp_path / "in_one_process")
  assert _max_difference(final_state(tmp_path / "in_one_process")[1],
                         final_state(reference)[1]) < 1e-6
  # Requeued: the same command resumes in two processes; process 1 is killed -9 at step 18,
  # process 0 stops once it has been silent for the peer timeout (JAX alone: an abort after
  # 100 s), and the run goes back to the checkpoint of step 15 (checkpoints every 5 steps).
  killed = tmp_path / "killed"
  launch = Launch(workdir, "pmap", pause=f"step:18:{killed}",
                  env={distributed.PEER_TIMEOUT_ENV: "5"})
  _wait_for([f"{killed}.0", f"{killed}.1"])
  launch.signal(signal.SIGKILL, which=[1])
  killed_at = time.monotonic()
  assert launch.wait() == [distributed.EXIT_PEER_LOST, -signal.SIGKILL]
  assert time.monotonic() - killed_at < 30
  assert launch.output(0).strip().splitlines()[-1] == (
      "error: process 1 stopped responding for 5 s (killed?): the run stops; rerun the same "
      "command on all processes to resume from the last checkpoint")
  assert "Traceback" not in launch.output(0)
  assert final_state(workdir)[0] == 15
  # Resumed again, process 0 (the coordinator) is killed -9 at step 16: JAX's client aborts
  # process 1 at once; its supervising parent says so in one line, with 75.
  killed = tmp_path / "coordinator_killed"
  launch = Launch(workdir, "pmap", pause=f"step:16:{killed}")
  _wait_for([f"{killed}.0", f"{killed}.1"])
  launch.signal(signal.SIGKILL, which=[0])
  killed_at = time.monotonic()
  assert launch.wait() == [-signal.SIGKILL, distributed.EXIT_PEER_LOST]
  assert time.monotonic() - killed_at < 10
  output = launch.output(1)
  assert output.strip().splitlines()[-1] == (
      "error: process 1: the coordinator (process 0) stopped answering (killed?) and JAX ended "
      "this process: the run stops; rerun the same command on all processes to resume from the "
      "last checkpoint")
  assert "Traceback" not in output and "F1" not in output and "Fatal" not in output
  assert final_state(workdir)[0] == 15
  assert Launch(workdir, "pmap").wait() == [0, 0]
  assert _max_difference(final_state(workdir)[1], final_state(reference)[1]) == 0
  assert train_losses(workdir) == train_losses(reference)  # recomputed, no duplicates
  resumed = json.loads((workdir / "results.json").read_text())
  uninterrupted = json.loads((reference / "results.json").read_text())
  assert resumed["final"] == uninterrupted["final"]
  assert resumed["best"] == uninterrupted["best"]
  _assert_written_once(workdir)


# ---- start-up ----------------------------------------------------------------------------------


def test_a_single_process_does_not_start_the_distributed_runtime(monkeypatch):
  for name in ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS"):
    monkeypatch.delenv(name, raising=False)
  assert distributed.initialize("auto") is None
  # A one-task SLURM job is one process too.
  monkeypatch.setenv("SLURM_JOB_ID", "1")
  monkeypatch.setenv("SLURM_STEP_NODELIST", "node001")
  monkeypatch.setenv("SLURM_NTASKS", "1")
  monkeypatch.setenv("SLURM_PROCID", "0")
  monkeypatch.setenv("SLURM_LOCALID", "0")
  assert distributed.detected_launch() is None
  assert distributed.initialize("auto") is None
  monkeypatch.setenv("SLURM_NTASKS", "8")
  assert distributed.detected_launch() == "SLURM (8 tasks)"


def test_an_incomplete_launch_is_one_clear_error(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "research.main", "--config", "tests/helpers.py", "--workdir",
       str(tmp_path / "w"), "--num_processes=2"], cwd=REPO, capture_output=True, text=True,
      timeout=120, env={k: v for k, v in os.environ.items() if not k.startswith("SLURM")})
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "error: a multi-process run needs --coordinator_address, --process_id as well (or a "
      "launcher JAX detects: SLURM, Open MPI, Cloud TPU)")
  assert not (tmp_path / "w").exists()


def test_a_start_without_its_coordinator_says_what_it_waits_for_and_ends_in_bounded_time(
    tmp_path):
  """Process 1 of 2 with no process 0: JAX alone waits 5 minutes in silence, then aborts."""
  port = _free_port()
  started = time.monotonic()
  result = subprocess.run(
      [sys.executable, "-m", "research.main", "--config", "tests/helpers.py", "--workdir",
       str(tmp_path / "w"), f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
       "--process_id=1", "--distributed_timeout=3"], cwd=REPO, capture_output=True, text=True,
      timeout=90, env={k: v for k, v in os.environ.items() if not k.startswith("SLURM")})
  assert time.monotonic() - started < 60
  assert result.returncode == 2, result.stderr
  assert f"waiting for the coordinator at 127.0.0.1:{port} (process 0) to answer" in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: process 1: the coordinator at 127.0.0.1:{port} did not answer within 3 s: start "
      "process 0 there, or check the address and the network (a slow cluster may need more: "
      "--distributed_timeout or RESEARCH_DISTRIBUTED_TIMEOUT)")
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("reuse_port", [False, True])
def test_process_0_refuses_a_coordinator_port_in_use(monkeypatch, reuse_port):
  """Another program on the port, or another process 0 (JAX's coordinator binds with
  SO_REUSEPORT, so a second one would share the port and wait for ever)."""
  def must_not_start(*args, **kwargs):
    raise AssertionError("jax.distributed.initialize was called")
  monkeypatch.setattr(jax.distributed, "initialize", must_not_start)
  with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as listener:
    if reuse_port:
      listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("::" if socket.has_ipv6 else "0.0.0.0", 0))
    listener.listen()
    port = listener.getsockname()[1]
    with pytest.raises(distributed.DistributedError) as raised:
      distributed.initialize("auto", coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                             process_id=0)
  assert str(raised.value) == (
      f"port {port} of --coordinator_address=127.0.0.1:{port} is already in use on this host "
      "(process 0 starts the coordinator there): another run or program listens on it, or "
      "another process was started with --process_id=0 (each process needs its own id); "
      "choose another port")


def test_the_timeouts_come_from_the_flag_or_the_environment(monkeypatch):
  monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
  assert distributed.start_timeout() == distributed.DEFAULT_TIMEOUT_SECONDS < 300
  monkeypatch.setenv(distributed.TIMEOUT_ENV, "600")
  assert distributed.start_timeout() == 600
  assert distributed.start_timeout(30) == 30
  monkeypatch.setenv(distributed.TIMEOUT_ENV, "10m")
  with pytest.raises(distributed.DistributedError, match="RESEARCH_DISTRIBUTED_TIMEOUT='10m'"):
    distributed.start_timeout()
  with pytest.raises(distributed.DistributedError, match="--distributed_timeout=0"):
    distributed.start_timeout(0)
  monkeypatch.delenv(distributed.PEER_TIMEOUT_ENV, raising=False)
  assert distributed.peer_timeout() == distributed.PEER_TIMEOUT_SECONDS < 100
  monkeypatch.setenv(distributed.PEER_TIMEOUT_ENV, "2.5")
  assert distributed.peer_timeout() == 2.5
  monkeypatch.setenv(distributed.PEER_TIMEOUT_ENV, "300")  # JAX would abort first
  with pytest.raises(distributed.DistributedError, match="between 0 and 100"):
    distributed.peer_timeout()


class _KeyValueStore:
  """The coordination service's key-value store as `PeerWatch` uses it; `down` as when the
  coordinator is gone."""

  def __init__(self):
    self.values, self.down = {}, False

  def key_value_set(self, key, value, allow_overwrite=False):
    if self.down:
      raise RuntimeError("UNAVAILABLE: failed to connect to all addresses")
    assert allow_overwrite or key not in self.values
    self.values[key] = value

  def key_value_dir_get(self, prefix):
    if self.down:
      raise RuntimeError("UNAVAILABLE: failed to connect to all addresses")
    return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


def test_a_process_that_stops_beating_is_named_as_lost():
  """Three processes; process 2 never beats (killed -9): each watchdog names it once it has been
  silent for the timeout, and not before; a coordinator that stops answering is named too."""
  store = _KeyValueStore()
  watches = [distributed.PeerWatch(store, i, 3, timeout=30) for i in (0, 1)]
  for now in range(0, 31):  # PeerWatch starts counting when it is created (monotonic clock)
    assert [w.check(w.last_change[2] + now) for w in watches] == [None, None]
  assert [w.check(w.last_change[2] + 31) for w in watches] == [
      "process 2 stopped responding for 30 s (killed?)"] * 2
  store.down = True
  assert watches[1].check(0) == "the coordinator (process 0) stopped answering (killed?)"
  assert distributed.EXIT_PEER_LOST == errors.EXIT_INTERRUPTED  # a requeue resumes the run


def test_sigterm_stops_within_the_two_steps_the_message_says(tmp_path, caplog, monkeypatch):
  """The signal comes after step 6 (a step that neither logs nor saves): step 7 carries it, and
  its flags are read with step 8's, which logs: the run stops there, two steps on."""
  import threading
  marker = tmp_path / "paused"
  monkeypatch.setenv(train.PAUSE_ENV, f"step:6:{marker}")

  def signal_when_paused():
    _wait_for([f"{marker}.0"], timeout=120)
    os.kill(os.getpid(), signal.SIGTERM)
  threading.Thread(target=signal_when_paused, daemon=True).start()
  with caplog.at_level("WARNING"), pytest.raises(errors.Interrupted, match="at step 8 of 24"):
    train.train_and_evaluate(tiny_config(**{"log.every_steps": 4}), tmp_path / "run")
  assert ("SIGTERM: stopping with a checkpoint within the next two steps (press Ctrl-C again "
          "to abort without one)") in caplog.text
  assert final_state(tmp_path / "run")[0] == 8


def test_the_local_launcher_stops_the_other_processes_when_one_fails(tmp_path):
  """Process 0 cannot start (its port is taken); process 1 would wait for it: the launcher stops
  it and exits with process 0's code, naming it."""
  with socket.socket() as listener:
    listener.bind(("0.0.0.0", 0))
    listener.listen()
    port = listener.getsockname()[1]
    started = time.monotonic()
    result = subprocess.run(
        ["bash", "experiments/launch/local_processes.sh", "2", "--config", "tests/helpers.py",
         "--workdir", str(tmp_path / "w"), "--distributed_timeout=300"], cwd=REPO,
        capture_output=True, text=True, timeout=120,
        env=dict({k: v for k, v in os.environ.items() if not k.startswith("SLURM")},
                 PORT=str(port), GRACE="20"))
  assert time.monotonic() - started < 60
  assert result.returncode == 2, result.stdout + result.stderr
  assert result.stderr.startswith(f"process 0 failed (exit code 2): error: port {port} of ")
  assert "stopping the other processes" in result.stderr
  assert result.stdout.startswith("exit codes: 2 143 ")


def test_an_error_in_the_main_thread_waits_for_the_verdict_on_its_peers(monkeypatch):
  """A collective that failed because its peer died (gloo: 'Connection closed by peer') ends
  with the watchdog's line, not a traceback; an error while every peer beats is printed as
  usual, and then told to the others (next test)."""
  monkeypatch.setattr(distributed, "BEAT_SECONDS", 0.02)
  monkeypatch.setattr(distributed, "LEAVE_SECONDS", 0.5)
  ended = []

  def exit_with(message, code):
    ended.append((message, code))
    raise SystemExit(code)
  monkeypatch.setattr(distributed, "_exit_with", exit_with)
  monkeypatch.setattr(distributed.atexit, "register", lambda f: None)
  monkeypatch.setattr(sys, "excepthook", sys.excepthook)
  for error, lost in ((ValueError("a genuine error"), False),
                      (ValueError("Gloo AllReduce failed: Connection closed"), True)):
    store, printed = _KeyValueStore(), []
    alive = distributed.PeerWatch(store, 1, 2, timeout=0.5)
    watch = distributed.PeerWatch(store, 0, 2, timeout=0.5)
    watch._previous_hook = lambda *exc: printed.append(exc[1])
    beating = threading.Event()

    def beat():  # process 1's watchdog, beating
      while not beating.wait(0.02):
        alive.check(time.monotonic())
    threading.Thread(target=beat, daemon=True).start()
    watch._thread = threading.Thread(target=lambda: _swallow_exit(watch._run), daemon=True)
    watch._thread.start()
    if lost:
      beating.set()  # process 1 is killed -9
    with pytest.raises(SystemExit):
      watch._excepthook(ValueError, error, None)
    beating.set()
    _end_thread(watch)  # else, left beating, it would end the test process once unpatched
    if lost:
      assert printed == [] and ended[-1] == (
          "process 1 stopped responding for 0.5 s (killed?): the run stops; rerun the same "
          "command on all processes to resume from the last checkpoint",
          distributed.EXIT_PEER_LOST)
    else:
      assert printed == [error] and ended[-1] == ("ValueError: a genuine error", 1)
      assert store.values["research/heartbeat/0"] == "failed 1 ValueError: a genuine error"


def test_a_process_ending_with_an_error_ends_the_others_with_its_line_and_status(monkeypatch):
  """Process 1 fails (say, its disk is full): process 0 would wait for it in its next collective
  until JAX gives up, then call it lost (75: a requeue that fails again). It ends at once with
  process 1's line and status; process 0 failing keeps its coordinator up until the others have
  read it (they leave), within LEAVE_SECONDS."""
  store = _KeyValueStore()
  watches = [distributed.PeerWatch(store, i, 3, timeout=30) for i in range(3)]
  assert [w.check(0) for w in watches] == [None] * 3
  watches[1].fail("no space left on device: /runs/x needs 2.1 GB more", 2)
  assert watches[1].check(1) is None  # its own failure, and no more beats
  assert store.values["research/heartbeat/1"].startswith("failed 2 ")
  for i in (0, 2):
    assert watches[i].check(1) == "process 1 failed: no space left on device: /runs/x needs 2.1 " \
                                  "GB more"
    assert watches[i].status == 2
  ended = []

  def exit_with(message, code):
    ended.append((message, code))
  monkeypatch.setattr(distributed, "_exit_with", exit_with)
  watches[2].lost = watches[2].check(2)
  watches[2]._stop_run()
  assert ended == [("process 1 failed: no space left on device: /runs/x needs 2.1 GB more; "
                    "the run stops", 2)]
  assert store.values["research/heartbeat/2"] == "left"
  # Process 0 fails: it waits for the others to leave (or to have failed themselves).
  store = _KeyValueStore()
  watches = [distributed.PeerWatch(store, i, 2, timeout=30) for i in range(2)]
  monkeypatch.setattr(distributed, "LEAVE_SECONDS", 5)
  threading.Timer(0.5, lambda: store.values.update({"research/heartbeat/1": "left"})).start()
  started = time.monotonic()
  watches[0].fail("a config error", 2)
  assert 0.4 < time.monotonic() - started < 3
  monkeypatch.setattr(distributed, "LEAVE_SECONDS", 0.3)
  started = time.monotonic()
  watches[0].fail("a config error", 2)  # process 1 never leaves: bounded
  assert time.monotonic() - started < 1


def test_the_watchdog_ends_before_the_interpreter_does():
  """At exit the watchdog's thread is stopped and waited for while it is inside a call to the
  coordination client (a daemon thread still in that C++ call when the interpreter finalizes
  is unwound by force and aborts the process: status -6 after its last line); one stuck past
  the wait is reported, so that the exit can end the process itself."""
  class SlowStore(_KeyValueStore):
    def __init__(self, seconds):
      super().__init__()
      self.seconds, self.calls = seconds, threading.Event()

    def key_value_dir_get(self, prefix):
      self.calls.set()
      time.sleep(self.seconds)  # a coordinator answering slowly
      return super().key_value_dir_get(prefix)

  for seconds, wait, ends in ((0.5, 5.0, True), (3.0, 0.2, False)):
    store = SlowStore(seconds)
    watch = distributed.PeerWatch(store, 1, 2, timeout=30)
    watch.exiting = True  # beating on after the main thread's end, as at exit
    watch._thread.start()
    assert store.calls.wait(5)
    start = time.monotonic()
    assert watch.finish(wait) is ends
    assert watch._thread.is_alive() is not ends
    assert time.monotonic() - start < (seconds + 1 if ends else wait + 1)
    watch._thread.join(seconds + 1)  # (the stuck one ends too, once its call returns)
    assert not watch._thread.is_alive()


def _end_thread(watch):
  def stop(now):
    raise SystemExit
  watch.check = stop
  watch._thread.join(timeout=10)
  assert not watch._thread.is_alive()


def _swallow_exit(run):
  try:
    run()
  except SystemExit:
    pass


def test_the_slurm_scripts_give_a_node_its_gpus_and_run_a_sweep_point_as_a_job_step(tmp_path):
  """With stand-ins for srun and scontrol: one task per node sees all the node's GPUs (JAX would
  pin it to SLURM_LOCALID's one), and a sweep point runs as a job step, where
  `--signal=TERM@120` (sent to the job's steps) reaches it; 75 requeues the array task."""
  bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
  bin_dir.mkdir()
  (bin_dir / "srun").write_text(
      f'#!/bin/bash\necho "srun $* | devices=${{JAX_LOCAL_DEVICE_IDS:-}}" >> {log}\nexit 75\n')
  (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "scontrol $*" >> {log}\n')
  for tool in ("srun", "scontrol"):
    (bin_dir / tool).chmod(0o755)
  (tmp_path / "sweep").mkdir()
  (tmp_path / "sweep" / "commands.txt").write_text("python -m research.main --config a.py\n")
  env = dict({k: v for k, v in os.environ.items() if k != "JAX_LOCAL_DEVICE_IDS"},
             PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="7",
             SLURM_GPUS_ON_NODE="2", SLURM_ARRAY_JOB_ID="7", SLURM_ARRAY_TASK_ID="1")
  launch = REPO / "experiments" / "launch"
  for script, args in (("slurm_node.sbatch", []), ("sweep_array.sbatch", ["sweep"])):
    result = subprocess.run(["bash", str(launch / script), *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 75, result.stderr
  calls = log.read_text().splitlines()
  assert calls[0].startswith("srun --kill-on-bad-exit=1 python -m research.main")
  assert calls[0].endswith("| devices=0,1")
  assert calls[1:] == [
      "scontrol requeue 7",
      "srun --ntasks=1 bash -c exec python -m research.main --config a.py | devices=",
      "scontrol requeue 7_1"]


# ---- the supervising parent --------------------------------------------------------------------

_JAX_ABORT = r'''
import os, sys
w = sys.stderr.write
w("I1207 01:02:11.2 140485 distributed.py:359] jax.distributed: process 1 of 2 (explicit)\n")
w("E1207 01:02:30.1 2956 some_op.cc:12] a C++ error this process goes on after\n")
w("training goes on\n")
sys.stderr.flush()
w("E1207 01:02:33.4 2956 coordination_service_agent.cc:289] Polled an error from coordination "
  "service (this can be an error from this or another task).\n")
w("F1207 01:02:33.4 2956 client.h:80] Terminating process because the JAX distributed service "
  "detected fatal errors. absl::Status: %s. Check earlier logs\n*** Check failure stack trace: "
  "***\n    @     0x7fc54fe40634  absl::log_internal::LogMessage::SendToLog()\n"
  "Fatal Python error: Aborted\n" % sys.argv[1])
sys.stderr.flush()
os.abort()
'''


def _supervise(child: str, *args: str, debug=False, **kwargs) -> subprocess.CompletedProcess:
  parent = ("import sys; from research import supervisor; "
            f"sys.exit(supervisor.run([sys.executable, '-c', {child!r}, *sys.argv[1:]], "
            f"debug={debug}))")
  return subprocess.run([sys.executable, "-c", parent, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=60, **kwargs)


@pytest.mark.parametrize("status, line, code", [
    ("UNAVAILABLE: Failed to send RPC to coordination service. Either the leader task was "
     "preempted", "process 1: the coordinator (process 0) stopped answering (killed?) and JAX "
     "ended this process: the run stops; rerun the same command on all processes to resume "
     "from the last checkpoint", 75),
    ("ABORTED: 1 unexpectedly tried to connect with a different incarnation. It has likely "
     "restarted", "process 1: the JAX coordination service ended this process (ABORTED: 1 "
     "unexpectedly tried to connect with a different incarnation): two processes were given "
     "the same --process_id (each needs its own); start them again", 2),
    ("INTERNAL: something else", "process 1: the JAX coordination service ended this process "
     "(INTERNAL: something else)", 2)])
def test_jax_aborting_a_process_ends_with_one_line_of_ours(status, line, code):
  """What JAX's coordination client prints and does when its coordinator dies (a fatal log line,
  a stack trace, Python's dump, SIGABRT) becomes one line and a status that says what to do; an
  error line the process went on after is passed on; --debug keeps JAX's lines."""
  result = _supervise(_JAX_ABORT, status)
  assert result.returncode == code, result.stderr
  assert result.stderr.splitlines() == [
      "I1207 01:02:11.2 140485 distributed.py:359] jax.distributed: process 1 of 2 (explicit)",
      "E1207 01:02:30.1 2956 some_op.cc:12] a C++ error this process goes on after",
      "training goes on", f"error: {line}"]
  debug = _supervise(_JAX_ABORT, status, debug=True)
  assert debug.returncode == code
  assert "Terminating process because" in debug.stderr and "Fatal Python error" in debug.stderr
  assert debug.stderr.splitlines()[-1] == f"error: {line}"


_WAITS_FOR_SIGNALS = r'''
import os, signal, sys, time
got = []
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
  signal.signal(s, lambda n, f: got.append(signal.Signals(n).name))
print(os.getpid(), flush=True)
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
  time.sleep(0.05)
print(" ".join(got), flush=True)
sys.stderr.write("a last line without its newline")
sys.exit(int(sys.argv[2]))
'''


def test_the_parent_passes_on_each_signal_once_and_the_childs_ending():
  """SIGTERM, SIGINT (a terminal's Ctrl-C reaches the parent only: the child has its own process
  group) and SIGUSR1 reach the child once each; its status and output are the parent's."""
  parent = subprocess.Popen(
      [sys.executable, "-c", "import sys; from research import supervisor; sys.exit(supervisor"
       f".run([sys.executable, '-c', {_WAITS_FOR_SIGNALS!r}, '3', '3']))"], cwd=REPO,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  child = int(parent.stdout.readline())
  assert os.getpgid(child) == child != os.getpgid(parent.pid)
  for number in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
    parent.send_signal(number)
    time.sleep(0.2)
  out, err = parent.communicate(timeout=30)
  assert parent.returncode == 3
  assert out == "SIGTERM SIGINT SIGUSR1\n" and err == "a last line without its newline"


def test_a_killed_parent_takes_its_child_and_a_killed_child_its_parent():
  parent = subprocess.Popen(
      [sys.executable, "-c", "import sys; from research import supervisor; sys.exit(supervisor"
       f".run([sys.executable, '-c', {_WAITS_FOR_SIGNALS!r}, '60', '0']))"], cwd=REPO,
      stdout=subprocess.PIPE, text=True)
  child = int(parent.stdout.readline())
  parent.kill()
  assert parent.wait(timeout=10) == -signal.SIGKILL
  deadline = time.monotonic() + 10
  while _alive(child):  # PR_SET_PDEATHSIG
    assert time.monotonic() < deadline, "the child outlived its parent"
    time.sleep(0.05)
  parent = subprocess.Popen(
      [sys.executable, "-c", "import sys; from research import supervisor; sys.exit(supervisor"
       f".run([sys.executable, '-c', {_WAITS_FOR_SIGNALS!r}, '60', '0']))"], cwd=REPO,
      stdout=subprocess.PIPE, text=True)
  os.kill(int(parent.stdout.readline()), signal.SIGKILL)  # the OOM killer, say
  assert parent.wait(timeout=10) == -signal.SIGKILL


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  # A zombie (killed, not yet reaped by init) counts as gone.
  with open(f"/proc/{pid}/stat") as stat:
    return stat.read().split(")")[-1].split()[0] != "Z"


def test_the_command_lines_error_is_told_to_the_other_processes(monkeypatch, capsys):
  """research.main's one-line errors go through distributed.fail when a PeerWatch runs (an
  interruption, 75, does not: every process stops at the same step by itself)."""
  from research import main
  told, exits = [], []

  class Watch:
    def fail(self, message, status):
      told.append((message, status))
  monkeypatch.setattr(distributed, "_watch", Watch())
  monkeypatch.setattr(distributed.os, "_exit", lambda status: exits.append(status))
  with pytest.raises(SystemExit):
    main._fail("a damaged data copy", 2)
  with pytest.raises(SystemExit):
    main._fail("stopped by SIGTERM at step 5", 75)
  assert told == [("a damaged data copy", 2)] and exits == [2]
  assert capsys.readouterr().err.startswith("error: a damaged data copy\n")
