"""Results over time: the SQLite history, regression detection, the static dashboard and the nightly job."""
