"""pipeline-runs: Esper's Pipeline Runs API on an event-sourced PostgreSQL store."""
