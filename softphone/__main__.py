"""Entry point: ``python -m softphone call --url … (--wav in.wav | --say-tone) --out reply.wav``, or
``python -m softphone outbound --url … --answer human|voicemail|no-answer|busy``."""

import os
import sys

from softphone.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], os.environ))
