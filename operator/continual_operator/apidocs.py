"""``python -m continual_operator.apidocs``: the command CI, scripts and docs call; the code is
:mod:`continual_operator.api.apidocs` (docs/api.md is generated from the API models)."""

import sys

from continual_operator.api.apidocs import main

if __name__ == "__main__":
    sys.exit(main())
