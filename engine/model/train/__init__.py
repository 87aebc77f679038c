"""Training: the config (`config`), windows and batches (`data`), the loss and one step (`step`),
a run (`run`), the entry point (`train`), and the copy path's fit (`copy_fit`).

`python -m engine.model.train` trains: `motif train`, whose command line is engine.cli.training."""
