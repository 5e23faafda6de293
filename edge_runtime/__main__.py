import sys

from qvit_edge.cli import main

sys.exit(main())
