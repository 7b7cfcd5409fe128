import sys

from pageheat.cli import main

sys.exit(main())
