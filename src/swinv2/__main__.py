"""`python -m swinv2 ...` (and `torchrun ... -m swinv2 train ...`): the `swinv2` command."""

import sys

from swinv2.cli import main

sys.exit(main())
