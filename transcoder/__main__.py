from common.lifecycle import main
from transcoder.stage import TranscoderStage

main("transcoder", TranscoderStage)
