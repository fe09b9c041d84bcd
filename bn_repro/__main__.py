import sys

from bn_repro.cli import main

sys.exit(main())
