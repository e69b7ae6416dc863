"""kzoo.ops."""
