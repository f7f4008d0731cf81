"""``python -m rdm_dynamics`` runs the verification (same as ``python -m rdm_dynamics.verify``)."""

import sys

from .verify import main

sys.exit(main())
