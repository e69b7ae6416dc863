"""kzoo.models."""
