"""``python -m emulator``: the local Gemini Live server (settings from the environment, SIGTERM stops it).

``common.lifecycle.main`` reads the settings once (a bad one exits 2 naming the variable), sets up
logging as ``emulator``, builds the stage and runs it under ``run_stage`` until SIGTERM/SIGINT.
"""

from common.lifecycle import main
from emulator.server import EmulatorStage

main("emulator", EmulatorStage)
