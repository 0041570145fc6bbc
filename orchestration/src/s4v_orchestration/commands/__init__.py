"""One module per command group of the ``s4v`` CLI, each registered in ``cli.py`` with one line."""
