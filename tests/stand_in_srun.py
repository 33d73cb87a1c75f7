"""A stand-in for SLURM's `srun --ntasks=N COMMAND...` on this machine: starts N copies of
COMMAND with the variables a job step's tasks get (the ones JAX's SLURM detection reads),
passes SIGTERM and SIGINT on to them, and exits with the highest status, as srun does. It
tests what `research.tune --launcher` hands a launcher; real SLURM is not on these machines."""

import os
import signal
import subprocess
import sys


def main(argv: list[str]) -> int:
  tasks = 1
  while argv and argv[0].startswith("--"):  # srun's options, before the command
    option = argv.pop(0)
    if option.startswith("--ntasks="):
      tasks = int(option.split("=", 1)[1])
  children = []
  for i in range(tasks):
    env = {**os.environ, "SLURM_JOB_ID": str(os.getpid()), "SLURM_STEP_NODELIST": "localhost",
           "SLURM_NTASKS": str(tasks), "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i),
           "SLURM_STEP_NUM_NODES": "1"}
    children.append(subprocess.Popen(argv, env=env))

  def forward(number, frame):
    for child in children:
      child.send_signal(number)

  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, forward)
  return max(child.wait() for child in children)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
