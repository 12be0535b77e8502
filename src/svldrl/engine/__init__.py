"""Engine: the base trainer (patches, loop, validation, checkpoints, logs) and sliding-window prediction."""
