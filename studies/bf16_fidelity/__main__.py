"""``python -m studies.bf16_fidelity``: the bfloat16 fidelity study (README.md beside this file)."""

import sys

from studies.bf16_fidelity.cli import main

if __name__ == "__main__":
  sys.exit(main())
