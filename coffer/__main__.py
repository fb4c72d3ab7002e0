"""``python -m coffer`` is the ``coffer`` command."""

from coffer.cli import main

main()
