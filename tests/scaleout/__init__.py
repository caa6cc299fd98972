"""Real services for the scale-out and fault tests: PostgreSQL, an MLflow server, worker processes."""
