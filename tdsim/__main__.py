"""``python -m tdsim``: the same as the ``tdsim`` console script."""

from tdsim.cli import main

raise SystemExit(main())
