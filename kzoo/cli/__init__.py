"""The ``kzoo`` command line."""
