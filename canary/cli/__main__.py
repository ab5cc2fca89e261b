"""``python -m canary.cli``: how workers and tests start the command line."""

from canary.cli.main import main

main()
