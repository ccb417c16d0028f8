"""Pure domain: the run lifecycle (statuses, legal and automatic moves, the fold) and domain errors; no I/O."""
