"""The errors of a run (training or inference) that `research.main` reports in one line."""


class DataError(ValueError):
  """Data that cannot be used as configured: missing files, fields or labels."""


class RunError(RuntimeError):
  """A run that cannot go on (workdir conflict, divergence); the message says why."""


class Interrupted(RunError):
  """Stopped by a signal at a step boundary, with a checkpoint there to resume from."""


EXIT_INTERRUPTED = 75  # stopped by a signal after saving a checkpoint: rerun to resume
