"""``python -m crl.study FILE``: see :mod:`crl.study.cli`."""

import sys

from crl.study.cli import main

if __name__ == "__main__":
    sys.exit(main())
