"""``python -m services.ledger``: run the ledger service (see --help for its settings)."""

import sys

from paysaga.runtime.service_process import main
from services.ledger.bootstrap import bootstrap

sys.exit(main("ledger", bootstrap))
