from common.lifecycle import main
from gateway.stage import GatewayStage

main("gateway", GatewayStage)
