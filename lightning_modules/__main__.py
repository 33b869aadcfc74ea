"""``python -m lightning_modules ...`` is the ``lightning`` console script."""

from lightning_modules.cli import main

main()
