import sys

from sai.cli.main import main

sys.exit(main())
