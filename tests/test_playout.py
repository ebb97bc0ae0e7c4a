"""Playback tracking: the ~1 s window, marks every ~200 ms, what was heard, clear and late chunks."""

from gateway.playout import Playout

MS = 8  # µ-law bytes per ms


def media(out):
    return [d for k, d in out if k == "media"]


def marks(out):
    return [d for k, d in out if k == "mark"]


def test_turn_start_goes_out_at_once_then_coalesces_to_200ms():
    p = Playout(ahead_ms=1000, mark_ms=200, low_water_ms=300)
    sizes = []
    for _ in range(25):  # 2 s of model audio in 80 ms chunks, faster than real time
        p.add(b"\x01" * 80 * MS, 1)
        sizes += [len(c) // MS for c in media(p.pump())]
    assert sizes[:4] == [80, 80, 80, 80]  # below the low-water mark: nothing waits
    assert set(sizes[4:]) == {200}
    assert sum(sizes) <= 1000 + 200  # never more than ~1 s ahead of playback


def test_marks_release_held_audio_and_count_what_was_heard():
    p = Playout(ahead_ms=400, mark_ms=200, low_water_ms=0)
    p.add(b"\x01" * 1000 * MS, 1)
    p.turn_done(1)
    out = p.pump()
    assert [len(c) // MS for c in media(out)] == [200, 200]
    first = marks(out)[0]
    echo = p.echoed(first)
    assert (echo.turn, echo.flushed, echo.heard_ms, echo.finished) == (1, False, 200, False)
    released = p.pump()
    assert [len(c) // MS for c in media(released)] == [200]
    pending = marks(out)[1:] + marks(released)
    while pending:  # Twilio plays on: each echo releases more
        last = p.echoed(pending.pop(0))
        pending += marks(p.pump())
    assert last.finished and last.heard_ms == 1000 and not p.playing
    assert p.turns[1].sent_ms == 1000


def test_clear_drops_held_audio_and_flushed_marks_do_not_count_as_heard():
    p = Playout(ahead_ms=400, mark_ms=200, low_water_ms=0)
    p.add(b"\x01" * 2000 * MS, 3)
    out = p.pump()
    heard = p.echoed(marks(out)[0])
    assert heard.heard_ms == 200
    assert p.clear() == 3
    assert not p.playing and p.pump() == []
    echo = p.echoed(marks(out)[1])  # Twilio echoes the pending mark after the clear
    assert echo.flushed and echo.heard_ms == 200 and echo.finished
    assert p.turns[3].interrupted


def test_late_chunks_of_a_cleared_turn_are_dropped_but_the_next_turn_plays():
    p = Playout(low_water_ms=0)
    p.add(b"\x01" * 160, 1)
    p.pump()
    p.clear()
    assert not p.add(b"\x02" * 160, 1)
    assert p.shed == 160
    assert p.add(b"\x03" * 160, 2)
    assert media(p.pump()) == [b"\x03" * 160]


def test_unknown_mark_is_ignored():
    assert Playout().echoed("not-ours") is None


def test_held_audio_is_bounded_and_sheds_the_oldest():
    p = Playout(ahead_ms=0, max_held_ms=100)
    p.add(b"\x01" * 80 * MS, 1)
    p.add(b"\x02" * 80 * MS, 1)
    assert p.shed == 60 * MS
    p.ahead = 10**9
    p.turn_done(1)
    sent = b"".join(media(p.pump()))
    assert len(sent) == 100 * MS and sent.endswith(b"\x02" * 80 * MS)
