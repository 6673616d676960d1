"""Experiments over many runs: override sweeps (`tandem.launch.sweep`) and their
summary table (`tandem.launch.summary`). The top layer: it starts the training
program as a subprocess and reads run workdirs, never imports it."""
