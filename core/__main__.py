"""``python -m userplane``: the admin CLI."""

from userplane.frontends.cli import main

main()
