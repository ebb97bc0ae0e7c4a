"""The model's audio that arrives in one loop pass leaves as one AudioDown per call (model_client/turns.py),
in order with everything else the call sends, and within its turn."""

import asyncio

import numpy as np
from google.genai import types

from common import messages as m
from model_client.barge import BargeInDetector
from model_client.reconnect import Conversation
from model_client.turns import ModelTurns

CHUNKS = [np.full(1920, v, dtype="<i2").tobytes() for v in (100, 200, 300, 400)]
AUDIO = types.LiveServerContent()


def said(text: str) -> types.LiveServerContent:
    return types.LiveServerContent(output_transcription=types.Transcription(text=text))


def turns_of(call: str, out: list) -> ModelTurns:
    return ModelTurns(call, out.append, BargeInDetector(), Conversation())


def shape(out: list) -> list:
    """(type, call, turn, seq, audio) of each message, with the audio as the chunks' indexes."""
    def audio_of(msg):
        joined = msg.audio
        found = []
        while joined:
            i = next(i for i, c in enumerate(CHUNKS) if joined.startswith(c))
            found.append(i)
            joined = joined[len(CHUNKS[i]):]
        return found
    return [(type(msg).__name__, msg.call, getattr(msg, "turn", None), getattr(msg, "seq", None),
             audio_of(msg) if isinstance(msg, m.AudioDown) else None) for msg in out]


async def test_one_pass_of_audio_is_one_message_per_call_in_order():
    out: list = []
    a, b = turns_of("a", out), turns_of("b", out)
    for chunk in CHUNKS[:3]:
        a.content(AUDIO, chunk)
    b.content(AUDIO, CHUNKS[3])
    assert out == []  # held until the loop pass ends
    await asyncio.sleep(0)
    assert shape(out) == [("AudioDown", "a", 1, 1, [0, 1, 2]), ("AudioDown", "b", 1, 1, [3])]
    a.content(AUDIO, CHUNKS[3])  # the next pass: a message of its own
    await asyncio.sleep(0)
    assert shape(out)[2:] == [("AudioDown", "a", 1, 2, [3])]


async def test_anything_else_for_the_call_leaves_after_the_audio_before_it():
    out: list = []
    turns = turns_of("a", out)
    turns.content(AUDIO, CHUNKS[0])
    turns.content(AUDIO, CHUNKS[1])
    turns.content(said(" hi"), None)
    turns.content(AUDIO, CHUNKS[2])
    turns.emit(m.CallerSpeech(call="a", source="vad"))  # what the session sends goes the same way
    turns.content(AUDIO, CHUNKS[3])
    turns.content(types.LiveServerContent(turn_complete=True), None)
    turns.content(AUDIO, CHUNKS[0])  # the next turn
    turns.content(types.LiveServerContent(interrupted=True), None)
    await asyncio.sleep(0)
    assert shape(out) == [
        ("AudioDown", "a", 1, 1, [0, 1]), ("Transcript", "a", 1, None, None),
        ("AudioDown", "a", 1, 2, [2]), ("CallerSpeech", "a", None, None, None),
        ("AudioDown", "a", 1, 3, [3]), ("TurnDone", "a", 1, None, None),
        ("AudioDown", "a", 2, 4, [0]), ("Interrupt", "a", 2, None, None)]


async def test_a_cut_turn_sends_its_held_audio_first():
    out: list = []
    turns = turns_of("a", out)
    turns.content(AUDIO, CHUNKS[0])
    turns.cut()  # the connection was lost
    await asyncio.sleep(0)
    assert shape(out) == [("AudioDown", "a", 1, 1, [0]), ("TurnDone", "a", 1, None, None)]
