from common.lifecycle import main
from model_client.stage import ModelClientStage

main("model_client", ModelClientStage)
