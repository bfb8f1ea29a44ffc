import sys

from services.reconcile.cli import main

sys.exit(main())
