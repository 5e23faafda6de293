import sys

from qvit.cli import main

sys.exit(main())
