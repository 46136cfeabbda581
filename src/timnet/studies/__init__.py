"""Many runs at once and their reports: sweeps."""
