"""Layer 13, the top: the ways in for people: the `ldm` command line (cli/: main and one module per subcommand) and the
Streamlit app (app/). Nothing below imports from here.
"""
