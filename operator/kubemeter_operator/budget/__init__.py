"""Budget decisions (pure): thresholds, phase, and later suspend/restore. See `policy`."""
