"""The optimizer: where a trial is born (space, samplers), merged and scored (objective,
scoring), stored (study loop) and read back (trials, summary). Imports nothing from the report,
export, demo or CLI rooms."""
