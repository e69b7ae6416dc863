"""kzoo.distribution."""
