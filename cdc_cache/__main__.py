"""``python -m cdc_cache`` runs the command line."""

from cdc_cache.cli import main

main()
