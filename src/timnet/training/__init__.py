"""Training units (one fold of one seed) and runs: the unit, the executors (serial, process pool, Ray,
packed), the run store, per-epoch state, device timing."""
