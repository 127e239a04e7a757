"""Convert an original MOTFM pickle into the suite's own safe format (``.npy`` arrays + JSON index per split).

    python scripts/convert_pickle.py data.pkl converted/ --trust-pickle [--image-size 128]
    python -m motfm.train data=pickle data.dataset.root=converted/

Unpickling runs arbitrary code: pass ``--trust-pickle`` only for a file you trust. The converted folder is
read without unpickling anything.
"""

from __future__ import annotations

import argparse
import sys

from motfm.cli import run_script
from motfm.data.legacy_pickle import convert_pickle


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and convert; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pickle", help="the original MOTFM .pkl file")
    parser.add_argument("out_dir", help="output folder (gets train/, val/, test/)")
    parser.add_argument("--trust-pickle", action="store_true", help="confirm that the pickle is trusted")
    parser.add_argument("--image-size", type=int, nargs="+", default=None, help="resize to H [W]")
    parser.add_argument("--num-mask-labels", type=int, default=4, help="mask labels including background")
    parser.add_argument("--class-names", nargs="+", default=None, help="class names in index order")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a bad-input error")
    args = parser.parse_args(argv)
    if not args.trust_pickle:
        parser.error("unpickling runs arbitrary code; pass --trust-pickle if you trust this file")
    size = args.image_size
    options = {
        "image_size": (size[0] if len(size) == 1 else size) if size else None,
        "num_mask_labels": args.num_mask_labels,
        "class_names": args.class_names,
    }

    def convert() -> int:
        for split, n in convert_pickle(args.pickle, args.out_dir, **options).items():
            print(f"{split}: {n} samples -> {args.out_dir}/{split}")
        return 0

    return run_script(convert, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
