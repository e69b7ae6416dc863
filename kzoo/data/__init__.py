"""kzoo.data."""
