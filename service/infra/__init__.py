"""Infrastructure: the connection pool, embedded PostgreSQL, logs, metrics, runtime, feed wake-ups."""
