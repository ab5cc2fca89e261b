"""The `canary` command line: the operator's and batch user's shell over the lower layers.

Each module holds the commands of one topic; ``canary.cli.main`` assembles them. Nothing
below this package imports it.
"""
