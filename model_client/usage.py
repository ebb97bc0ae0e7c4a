"""A call's token usage, from the service's ``usage_metadata`` reports (pure).

Each report counts tokens by direction (``input`` = the prompt, ``output`` = the response) and
modality (``audio``, ``text``, …), from its ``*_tokens_details``; a count its details do not cover is
``other``. The call's totals are keyed ``<direction>_<modality>``.

Reading the reports. Google documents the fields, not whether a Live session's reports are per turn
or running totals. Vertex documents that a turn's processed tokens include the session's memory
(https://cloud.google.com/vertex-ai/generative-ai/docs/provisioned-throughput/live-api), which is what
per-turn reports look like: each turn's prompt holds the whole conversation so far, so the prompt and
the total grow turn after turn *either way*. A growing total therefore tells nothing. The response
count does: per turn, it is about what the model said in that turn; as a running total, about what it
said in the whole call. The bridge knows what it said: the model audio it received (``AUDIO_TOKENS_PER_S``,
the rate Google documents for audio). So:

- the reports of one turn (several may come before its ``turn_complete``) count once: the last one;
- per turn, the call's usage is the sum of the reports; as running totals, the last report of each
  connection (a new connection is a new session on the service's side, so its counts start again);
- the reading whose output tokens are nearer the model audio received is the one taken (a tie, as with
  a single report, where both agree: per turn). The choice is made again at every report, with all the
  call's evidence, so the totals are final only when the call ends (``/metrics`` adds them then).
"""

from __future__ import annotations

import secrets

from google.genai import types

AUDIO_TOKENS_PER_S = 25  # https://cloud.google.com/vertex-ai/generative-ai/docs/provisioned-throughput/live-api
PCM24_BYTES_PER_S = 48_000  # the model's audio: PCM16 mono 24 kHz


def counts(usage: types.UsageMetadata) -> dict[str, int]:
    """One report's tokens as ``<direction>_<modality>``: prompt is input, response is output."""
    found: dict[str, int] = {}
    for direction, total, details in (
            ("input", usage.prompt_token_count, usage.prompt_tokens_details),
            ("output", usage.response_token_count, usage.response_tokens_details)):
        by_modality = _by_modality(details)
        if total is None and direction == "output" and usage.total_token_count is not None:
            # Vertex's converter drops responseTokenCount: the total less the prompt, if no details say
            total = None if by_modality else usage.total_token_count - (usage.prompt_token_count or 0)
        covered = sum(by_modality.values())
        if total is not None and total > covered:
            by_modality["other"] = total - covered
        for modality, n in by_modality.items():
            found[f"{direction}_{modality}"] = found.get(f"{direction}_{modality}", 0) + n
    return found


def _by_modality(details: list[types.ModalityTokenCount] | None) -> dict[str, int]:
    found: dict[str, int] = {}
    for d in details or []:
        if d.token_count and d.token_count > 0:
            name = d.modality.value.lower() if d.modality else "other"
            name = "other" if name == "modality_unspecified" else name
            found[name] = found.get(name, 0) + d.token_count
    return found


def _output(tokens: dict[str, int]) -> int:
    return sum(n for key, n in tokens.items() if key.startswith("output_"))


def _add(into: dict[str, int], tokens: dict[str, int]) -> None:
    for key, n in tokens.items():
        into[key] = into.get(key, 0) + n


class UsageMeter:
    """One call's reports, over all its connections."""

    def __init__(self) -> None:
        self.session = secrets.token_hex(4)  # tells this meter's totals from another model_client's
        self._connections: list[list[dict[str, int]]] = [[]]
        self._turn_open = False  # a report came, and its turn has not completed yet
        self._audio_bytes = 0
        self.running_totals = False  # the reading taken at the latest report

    def connected(self) -> None:
        """A new connection: its reports start again (as running totals would)."""
        if self._connections[-1]:
            self._connections.append([])
        self._turn_open = False

    def model_audio(self, nbytes: int) -> None:
        self._audio_bytes += nbytes

    def report(self, usage: types.UsageMetadata, turn_complete: bool) -> None:
        reports = self._connections[-1]
        if self._turn_open:
            reports.pop()  # a later report of the same turn replaces the earlier one
        reports.append(counts(usage))
        self._turn_open = not turn_complete

    def totals(self) -> dict[str, int]:
        """The call's tokens so far, by the reading that fits the model audio received."""
        summed: dict[str, int] = {}
        latest: dict[str, int] = {}
        for reports in self._connections:
            for tokens in reports:
                _add(summed, tokens)
            if reports:
                _add(latest, reports[-1])
        heard = self._audio_bytes / PCM24_BYTES_PER_S * AUDIO_TOKENS_PER_S
        self.running_totals = abs(_output(latest) - heard) < abs(_output(summed) - heard)
        return latest if self.running_totals else summed
