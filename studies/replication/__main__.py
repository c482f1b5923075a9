"""``python -m studies.replication``: the replication study (README.md beside this file)."""

import sys

from studies.replication.cli import main

if __name__ == "__main__":
  sys.exit(main())
