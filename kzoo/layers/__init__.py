"""kzoo.layers."""
