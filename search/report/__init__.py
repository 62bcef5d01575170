"""Looking at a study: the static HTML report, its plots and the optuna-dashboard server."""
