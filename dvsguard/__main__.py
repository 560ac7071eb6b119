"""``python -m dvsguard`` is the ``dvsguard`` command."""

from dvsguard.cli import main

main()
