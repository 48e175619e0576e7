import sys

from rcenp.cli import main

sys.exit(main())
