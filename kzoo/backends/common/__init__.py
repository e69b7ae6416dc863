"""Code every backend shares (keras keeps the same in ``keras/src/backend/common``): the
context-parallel schedule, written in plain Python and numpy."""
