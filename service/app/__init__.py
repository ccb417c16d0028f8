"""Use cases: create, change and delete runs and stage runs, pipelines; group commit, the sweeper, replay/verify, seed."""
