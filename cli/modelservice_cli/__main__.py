"""`python -m modelservice_cli ...`: the `modelservice` command without the console script."""

import sys

from modelservice_cli.main import main

sys.exit(main())
