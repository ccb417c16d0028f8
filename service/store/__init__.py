"""All SQL of the service: named constants, functions that take a connection."""
