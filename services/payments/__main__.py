"""``python -m services.payments``: run the payments service (see --help for its settings)."""

import sys

from paysaga.runtime.service_process import main
from services.payments.bootstrap import bootstrap
from services.payments.config import OPTIONS

sys.exit(main("payments", bootstrap, options=OPTIONS))
