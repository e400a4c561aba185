"""Subcommands of the `ldm` command line."""
