"""``python -m transcoder`` (common.lifecycle, imported first, keeps OpenBLAS to one thread)."""

from common.lifecycle import main
from transcoder.stage import TranscoderStage

main("transcoder", TranscoderStage)
