"""`python -m app.cli`: the `lethe` command (how `lethe serve` starts its worker)."""

from app.cli import main

main()
