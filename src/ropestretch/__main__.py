import sys

from ropestretch.cli import main

sys.exit(main())
