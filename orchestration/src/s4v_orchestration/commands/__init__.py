"""One module per command group; each is registered in ``cli.py`` with one line."""
