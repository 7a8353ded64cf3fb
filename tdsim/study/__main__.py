"""``python -m tdsim.study STUDY.toml ...``: the study subcommand without the main CLI."""

import sys

from tdsim.study.cli import main

sys.exit(main())
