"""``python -m services.inventory``: run the inventory service (see --help for its settings)."""

import sys

from paysaga.runtime.service_process import main
from services.inventory.bootstrap import bootstrap

sys.exit(main("inventory", bootstrap))
