import os

# One core per transcoder (DESIGN §1): OpenBLAS must not spread a batch's matrix product over threads
# that would compete with the other stages' processes. Set before numpy loads; an explicit value wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from common.lifecycle import main  # noqa: E402  (after the line above, on purpose)
from transcoder.stage import TranscoderStage  # noqa: E402

main("transcoder", TranscoderStage)
