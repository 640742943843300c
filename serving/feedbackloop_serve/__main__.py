import sys

from feedbackloop_serve.main import main

sys.exit(main())
