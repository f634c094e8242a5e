"""Results over time: the SQLite history, regression detection, A/B comparison, the static dashboard."""
