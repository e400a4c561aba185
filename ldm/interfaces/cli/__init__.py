"""The `ldm` command line: main.py builds the parser and runs a subcommand; one module per subcommand."""
