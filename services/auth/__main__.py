"""``python -m services.auth``: run the OAuth authorization server (see --help for its settings)."""

import sys

from paysaga.runtime.service_process import main
from services.auth.bootstrap import bootstrap
from services.auth.config import OPTIONS

sys.exit(main("auth", bootstrap, options=OPTIONS))
