"""``python -m s4v_orchestration`` is the same as the ``s4v`` command."""

from s4v_orchestration.cli import main

main()
