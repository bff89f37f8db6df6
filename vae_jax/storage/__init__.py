"""What a run leaves on disk and how it is read back: the Orbax checkpoints (checkpoint), the
workdir lock and its probe (lock), JSON-lines records (records), the writers of metrics,
TensorBoard scalars, config.json and PNG grids (writers), and run.json (runinfo)."""
