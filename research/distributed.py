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
"""

from __future__ import annotations

import logging
import os

MODES = ("auto", "on", "off")


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


def initialize(mode: str = "auto", *, coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> str | None:
  """Calls `jax.distributed.initialize` if this process is one of several (see `mode`).

  Must run before anything touches a JAX backend. Returns a line describing the runtime
  started, or None when the run is a single process.
  """
  if mode not in MODES:
    raise DistributedError(f"--distributed={mode!r} is not one of {MODES}")
  if mode == "off":
    return None
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  explicit = (coordinator_address, num_processes, process_id)
  launch = detected_launch()
  if mode == "auto" and launch is None and explicit == (None, None, None):
    return None
  import jax
  if launch is None and None in explicit and mode == "auto":
    missing = [name for name, value in zip(
        ("--coordinator_address", "--num_processes", "--process_id"), explicit) if value is None]
    raise DistributedError(f"a multi-process run needs {', '.join(missing)} as well (or a "
                           "launcher JAX detects: SLURM, Open MPI, Cloud TPU)")
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  except (RuntimeError, ValueError) as e:
    raise DistributedError(f"jax.distributed.initialize failed ({launch or 'explicit'}): "
                           f"{' '.join(str(e).split())}") from e
  line = (f"process {jax.process_index()} of {jax.process_count()} ({launch or 'explicit'}); "
          f"{jax.device_count()} devices in all, {jax.local_device_count()} here")
  logging.info("jax.distributed: %s", line)
  return line
