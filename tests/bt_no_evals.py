"""configs/ssl/barlow_twins.py without evaluations, the final one included: the
config of the tests that run training as a program (several processes, SLURM,
Ctrl-C) and compare checkpoints, not evaluations. In-process tests get the same
from conftest.NO_EVALS."""
from configs.ssl import barlow_twins


def get_config(arg=None):
  config = barlow_twins.get_config(arg)
  config.evals = {}
  return config
