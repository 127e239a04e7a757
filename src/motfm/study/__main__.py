"""``python -m motfm.study``."""

from motfm.study.run import main

main()
