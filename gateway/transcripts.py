"""Per-call transcripts: what the caller said and what the model said, with how much of each model
turn the caller actually heard (from the playback marks). One JSON object per line, one file per
call (``{BRIDGE_TRANSCRIPT_DIR}/{CallSid}.jsonl``), and a log line per utterance."""

from __future__ import annotations

import json
import logging
import os
import time

from gateway.playout import TurnState

log = logging.getLogger(__name__)


class TranscriptLog:
    def __init__(self, directory: str, call_sid: str):
        self.path = os.path.join(directory, f"{call_sid}.jsonl") if directory else ""
        self._caller: list[str] = []
        self._model: dict[int, list[str]] = {}
        self.lines = 0

    def caller(self, text: str, final: bool) -> None:
        self._caller.append(text)
        if final:
            self._flush_caller()

    def model(self, turn: int, text: str) -> None:
        self._flush_caller()  # the model answering means the caller's utterance is over
        self._model.setdefault(turn, []).append(text)

    def line(self, text: str) -> None:
        """Something on the line besides words: hold, idle prompts, stalls (already logged)."""
        self._write({"role": "line", "text": text})

    def turn_finished(self, turn: int, state: TurnState) -> None:
        text = "".join(self._model.pop(turn, [])).strip()
        if not text and not state.sent:
            return
        what = f"interrupted by {state.interrupted_by or 'the caller'}" if state.interrupted else "complete"
        log.info("model turn %d (%s, heard %d of %d ms): %s", turn, what, state.heard_ms, state.sent_ms,
                 text)
        self._write({"role": "model", "turn": turn, "text": text, "sent_ms": state.sent_ms,
                     "heard_ms": state.heard_ms, "interrupted": state.interrupted,
                     **({"interrupted_by": state.interrupted_by} if state.interrupted else {})})

    def event(self, what: str, **details: str) -> None:
        """Something that happened to the call rather than in the conversation (an outbound call's
        answering-machine verdict, its outcome): one line here, one in the log."""
        log.info("call %s%s", what, "".join(f", {k} {v}" for k, v in details.items()))
        self._write({"role": "call", "event": what, **details})

    def close(self, turns: dict[int, TurnState], closing: dict | None = None) -> None:
        """The call ended: write whatever is still open, then the closing record (role "end")."""
        self._flush_caller()
        for turn in sorted(set(self._model) | {t for t, s in turns.items() if not s.finished}):
            self.turn_finished(turn, turns.get(turn, TurnState()))
        if closing is not None:
            self._write({"role": "end", **closing})

    def _flush_caller(self) -> None:
        text = "".join(self._caller).strip()
        self._caller.clear()
        if text:
            log.info("caller: %s", text)
            self._write({"role": "caller", "text": text})

    def _write(self, record: dict) -> None:
        if not self.path:
            return
        record = {"t": round(time.time(), 3), **record}
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.lines += 1
        except OSError as e:  # its text, not the exception: a kept log record must not hold this frame
            log.error("cannot write transcript %s: %s", self.path, str(e))
