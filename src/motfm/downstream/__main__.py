"""``python -m motfm.downstream``."""

from motfm.downstream.run import main

main()
