"""``python -m studies.second_order``: the second-order check (README.md beside this file)."""

import sys

from studies.second_order.cli import main

if __name__ == "__main__":
  sys.exit(main())
