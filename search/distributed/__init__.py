"""What lets many workers share one study: storage URLs, database locks, the trial budget,
stale-trial heartbeats and local worker processes."""
