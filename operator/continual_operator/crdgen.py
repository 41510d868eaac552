"""``python -m continual_operator.crdgen``: the command CI, scripts and docs call; the code is
:mod:`continual_operator.api.crdgen` (the CRDs are generated from the API models, so they live together)."""

import sys

from continual_operator.api.crdgen import main

if __name__ == "__main__":
    sys.exit(main())
