"""`python -m feedbackloop_train` runs the same entry point as the `feedbackloop-train` console script."""

import sys

from feedbackloop_train.main import main

sys.exit(main())
