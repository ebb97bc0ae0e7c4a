"""Entry point: ``python -m softphone call --url … (--wav in.wav | --say-tone) --out reply.wav``."""

import os
import sys

from softphone.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], os.environ))
