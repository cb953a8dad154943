"""`python -m cli` is `oktopost-connect`."""

import sys

from cli.main import main

sys.exit(main())
