"""What the detector, the autoencoder, the oracle and the self-supervised encoder share when they are trained.

* :mod:`bcfeat.training.device` - the device (``"auto"``: CUDA when there is one) and the
  thread count / determinism of a run, restored afterwards.
* :mod:`bcfeat.training.checkpoint` - one file convention, ``{"format": "bcfeat.<kind>/<version>",
  "config": asdict(cfg), "state_dict": ..., **extra}``, written atomically and read through
  :func:`bcfeat.model_files.load_model_file`; one ``config_from_dict`` for every config; one
  resume check.
* :mod:`bcfeat.training.loop` - the loop itself (``run_units``: epochs or steps from the start or a
  resumed checkpoint, a record each, checkpoints every k units and after the last, an early stop),
  the optimiser step (mixed precision, gradient scaling, clipping, one NaN policy) and the resume
  state (optimiser, scheduler, scaler, RNG states).
* :mod:`bcfeat.training.distributed` - DistributedDataParallel under ``torchrun`` (each rank's slice
  of the same global batch, rank-0 checkpoints); :mod:`bcfeat.runner.train` trains any of the four
  models from a data file, in one process or under torchrun.

Each model's own module keeps only what is specific to it: its unit of training (batches, loss,
schedule) and its file's kind.
"""
