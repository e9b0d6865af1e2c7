"""``python -m bcfeat.runner``: run the study's stages (see :func:`bcfeat.runner.pipeline.main`)."""

import sys

from bcfeat.runner.pipeline import main

sys.exit(main())
