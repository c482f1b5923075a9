"""``python -m studies.confirm``: the confirmatory study (README.md beside this file)."""

import sys

from studies.confirm.cli import main

if __name__ == "__main__":
  sys.exit(main())
