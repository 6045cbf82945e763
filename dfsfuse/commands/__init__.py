"""Subcommands of the ``dfsfuse`` CLI, one module each (see :mod:`dfsfuse.cli`)."""
