"""What runs a run on machines: the command lines' plumbing, devices and sharding, checkpoints, the workdir's claim."""
