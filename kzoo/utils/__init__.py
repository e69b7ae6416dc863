"""Small helpers shared across kzoo."""
