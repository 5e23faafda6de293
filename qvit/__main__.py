from qvit.cli import main
import sys
sys.exit(main())
