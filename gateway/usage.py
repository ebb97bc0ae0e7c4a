"""A call's model tokens and estimated cost, as its model_clients report them (``Usage`` messages).

Each model_client session that held the call sends its running totals (model_client/usage.py); the
call's tokens are the sum of each session's latest. When the call ends they go into the call-end log
line, the transcript's closing record and ``bridge_model_tokens_total{direction,modality}`` (added
then, once: a session's totals are final only at the end). With ``BRIDGE_PRICE_PER_MTOK`` set, the
cost is estimated from them.
"""

from __future__ import annotations

from common import messages as m
from common.setting_readers import PRICE_KEY

MAX_KINDS = 16  # token kinds kept per session: a model_client sends a handful


class CallUsage:
    def __init__(self) -> None:
        self._by_session: dict[str, dict[str, int]] = {}

    def update(self, msg: m.Usage) -> bool:
        """Keep ``msg``'s totals for its session; False (and nothing kept) if they are malformed."""
        tokens = msg.tokens
        if len(tokens) > MAX_KINDS or not all(isinstance(k, str) and PRICE_KEY.match(k) and type(n) is int
                                              and n >= 0 for k, n in tokens.items()):
            return False
        self._by_session[msg.session[:40]] = dict(tokens)
        return True

    def tokens(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for tokens in self._by_session.values():
            for key, n in tokens.items():
                total[key] = total.get(key, 0) + n
        return dict(sorted(total.items()))


def cost(tokens: dict[str, int], prices: tuple[tuple[str, float], ...]) -> float | None:
    """The estimated cost in the prices' currency, None without prices."""
    if not prices:
        return None
    table = dict(prices)
    return round(sum(n * table.get(key, 0.0) for key, n in tokens.items()) / 1e6, 6)


def closing_record(tokens: dict[str, int], prices: tuple[tuple[str, float], ...]) -> dict:
    """What the transcript's closing record says about usage."""
    record: dict = {"tokens": tokens}
    estimate = cost(tokens, prices)
    if estimate is not None:
        record["cost"] = estimate
    return record


def summary(tokens: dict[str, int], prices: tuple[tuple[str, float], ...]) -> str:
    """For the call-end log line: "tokens in 420 audio + 12 text, out 300 audio, cost ~0.0047"."""
    if not tokens:
        return "no token usage reported"
    parts = []
    for direction, word in (("input", "in"), ("output", "out")):
        kinds = [f"{n} {key.split('_', 1)[1]}" for key, n in tokens.items() if key.startswith(direction + "_")]
        if kinds:
            parts.append(f"{word} {' + '.join(kinds)}")
    estimate = cost(tokens, prices)
    return "tokens " + ", ".join(parts) + (f", cost ~{estimate:.4f}" if estimate is not None else "")


def add_to(totals: dict[str, int], tokens: dict[str, int]) -> None:
    for key, n in tokens.items():
        totals[key] = totals.get(key, 0) + n
