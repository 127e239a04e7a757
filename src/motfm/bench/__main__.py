"""``python -m motfm.bench``: see :mod:`motfm.bench.main`."""

from motfm.bench.main import main

if __name__ == "__main__":
    main()
