import sys

from mcm_fast.cli import main

sys.exit(main())
