"""``python -m tools.frontier``: the sweep's command line."""

from tools.frontier.sweep import main

main()
