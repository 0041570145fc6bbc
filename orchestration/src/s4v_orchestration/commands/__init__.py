"""Command groups of the ``s4v`` CLI, one module per group, each registered in ``cli.py``."""
