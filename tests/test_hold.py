"""The hold sound (gateway/hold.py) on its own and in a call, and what /twiml/after says after a stall."""

import asyncio
import wave

import numpy as np
import pytest

from common.g711 import decode_ulaw
from common.settings import SettingsError
from gateway import hold, twiml
from gateway.call_state import CallRecord, next_after
from gateway.calls import Call
from gateway.playout import Playout
from gateway.transcripts import TranscriptLog


def test_the_default_sound_is_quiet_but_there():
    pcm = decode_ulaw(hold.default_sound()).astype(np.float64)
    peak = np.abs(pcm).max() / 32768
    assert 0.02 < peak < 0.1
    assert np.mean(pcm == 0) > 0.5, "mostly rest: a chime, not a drone"


def test_a_hold_wav_must_be_8khz_mono_pcm16(tmp_path):
    good, stereo = tmp_path / "good.wav", tmp_path / "stereo.wav"
    for path, channels in ((good, 1), (stereo, 2)):
        with wave.open(str(path), "wb") as w:
            w.setnchannels(channels)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(np.full(800 * channels, 1000, dtype="<i2").tobytes())
    assert len(hold.sound_from(str(good))) == 800
    for bad in (stereo, tmp_path / "missing.wav"):
        with pytest.raises(SettingsError, match="BRIDGE_HOLD_AUDIO"):
            hold.sound_from(str(bad))


class Line:
    def __init__(self, after_s=0.05):
        self.out, self.events, self.busy, self.counters = [], [], False, {}
        self.hold = hold.Hold(hold.default_sound(), after_s, send=lambda kind, data: self.out.append((kind, data)),
                              busy=lambda: self.busy, event=self.events.append, counters=self.counters)

    def kinds(self):
        return [kind for kind, _ in self.out]


async def test_hold_starts_after_the_wait_keeps_little_queued_and_stops_with_a_clear(until):
    line = Line()
    line.hold.waiting(on=True)
    await until(lambda: line.hold.playing)
    assert line.kinds() == ["media", "mark"] * hold.AHEAD_CHUNKS
    first_mark = line.out[1][1]
    assert line.hold.owns(first_mark)
    line.hold.echoed(first_mark)
    assert line.kinds() == ["media", "mark"] * (hold.AHEAD_CHUNKS + 1), "topped up as it plays"
    line.hold.stop("the model speaks")
    assert line.kinds()[-1] == "clear" and not line.hold.playing
    assert line.counters["hold_plays"] == 1 and "hold_ms" in line.counters
    assert any("stopped" in e for e in line.events)
    line.hold.waiting(on=False)


async def test_no_hold_while_the_model_audio_plays(until):
    line = Line()
    line.busy = True
    line.hold.waiting(on=True)
    await asyncio.sleep(0.3)
    assert line.out == []
    line.busy = False
    await until(lambda: line.hold.playing)
    line.hold.waiting(on=False)
    assert line.kinds()[-1] == "clear"


async def test_the_model_audio_flushes_the_hold_sound_before_it_plays(until, tmp_path):
    call = Call("c1", "CA1", "MZ1", ws=None, playout=Playout(), transcript=TranscriptLog(str(tmp_path), "CA1"))
    call.start_hold(hold.default_sound(), after_s=0.05)
    call.hold.waiting(on=True)
    await until(lambda: call.hold.playing)
    call.send_audio(b"\x01" * 800, turn=1)
    kinds = [kind for kind, _ in call._out]
    assert kinds[:4] == ["media", "mark"] * 2 and kinds[4] == "clear" and kinds[5] == "media"
    assert call.mark_echoed(call._out[1][1]) is None, "a hold mark is not the model's"
    call.hold.close()
    assert '"role": "line"' in (tmp_path / "CA1.jsonl").read_text()


def test_after_a_stall_the_call_resumes_with_an_apology_first():
    now, keep = next_after(CallRecord(disposition="stalled"))
    assert now.disposition == "stalled" and keep.disposition == "resume" and now.resumes == 1
    now, _ = next_after(CallRecord(disposition="stalled", resumes=2))
    assert now.disposition == "apologise"
    doc = twiml.say_first("Sorry.", twiml.hangup_twiml())
    assert doc == f"{twiml.PROLOG}<Response><Say>Sorry.</Say><Hangup/></Response>"
