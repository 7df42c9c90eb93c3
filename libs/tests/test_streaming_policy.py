"""LocalAgreement-2 policy on scripted hypotheses: what a caller would see in interims and finals."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from scribe_libs.streaming.policy import LocalAgreementPolicy, cut_looping_tail, normalize
from scribe_libs.streaming.types import Word

# A spoken script: word k spans [0.5k + 0.05, 0.5k + 0.45] s from the stream start.
SCRIPT = "thank you for calling how can I help you today my order has not arrived yet".split()


def truth(k: int) -> Word:
    return Word(0.5 * k + 0.05, 0.5 * k + 0.45, SCRIPT[k % len(SCRIPT)])


def heard(window_start: float, now: float, wrong_tail: int = 0) -> list[Word]:
    """What a decoder says for [window_start, now]: the complete words, relative to the window,
    with the last ``wrong_tail`` words misheard (as Whisper does with a word cut by the window end)."""
    words = []
    k = 0
    while truth(k).end <= now:
        w = truth(k)
        if w.start >= window_start - 0.01:
            words.append(w.shifted(-window_start))
        k += 1
    for i in range(1, min(wrong_tail, len(words)) + 1):
        w = words[-i]
        words[-i] = Word(w.start, w.end, w.text + "x")
    return words


def texts(results) -> list[str]:
    return [r.text for r in results]


def test_two_agreeing_hypotheses_commit_their_common_prefix():
    policy = LocalAgreementPolicy(channel=1)
    (first,) = policy.feed([Word(0.0, 0.4, "Thank"), Word(0.5, 0.9, "ewe")], 0.0, 1.0)
    assert first.stability == 0.0 and first.committed_words == 0 and first.text == "Thank ewe"
    (second,) = policy.feed([Word(0.0, 0.4, "thank"), Word(0.5, 0.9, "you,"), Word(1.0, 1.4, "for")], 0.0, 1.5)
    # "Thank" and "thank" agree (case and punctuation do not count); "ewe" vs "you," do not.
    assert second.committed_words == 1 and second.text == "thank you, for"
    assert abs(second.stability - 1 / 3) < 1e-9
    assert second.result_id == "1-0" and not second.is_final
    (third,) = policy.feed([Word(0.0, 0.4, "thank"), Word(0.5, 0.9, "you"), Word(1.0, 1.4, "for")], 0.0, 2.0)
    assert third.committed_words == 3 and third.stability == 1.0
    assert policy.committed_end == 1.4


def test_committed_words_never_change_and_finals_are_append_only():
    policy = LocalAgreementPolicy()
    policy.feed([Word(0.0, 0.4, "hello"), Word(0.5, 0.9, "world")], 0.0, 1.0)
    policy.feed([Word(0.0, 0.4, "hello"), Word(0.5, 0.9, "world")], 0.0, 1.2)
    # A later hypothesis disagrees with committed words: they stay as committed.
    (interim,) = policy.feed([Word(0.0, 0.4, "yellow"), Word(0.5, 0.9, "word"), Word(1.0, 1.3, "again")], 0.0, 1.5)
    assert interim.text.startswith("hello world")
    (final,) = policy.end_of_speech(
        [Word(0.0, 0.4, "hello"), Word(0.5, 0.9, "world"), Word(1.0, 1.3, "again")], 0.0, 1.5
    )
    assert final.is_final and final.text == "hello world again" and final.result_id == "0-0"
    assert final.stability == 1.0 and (final.start, final.end) == (0.0, 1.3)
    # The next utterance gets the next id; nothing of the first is sent again.
    (nxt,) = policy.feed([Word(0.0, 0.3, "again"), Word(1.0, 1.4, "bye")], 1.0, 2.5)
    assert nxt.result_id == "0-1" and nxt.text == "bye"
    (final2,) = policy.end_of_speech()
    assert final2.text == "bye" and final2.result_id == "0-1"
    assert policy.end_of_speech() == []  # nothing pending: no empty final


def test_no_duplicated_or_lost_words_across_finals_with_overlapping_windows():
    policy = LocalAgreementPolicy()
    finals: list[Word] = []
    # Utterance 1 is decoded in growing windows from 0; it ends at word 5 (t=2.95).
    for now in (1.0, 1.5, 2.0, 2.5):
        policy.feed(heard(0.0, now, wrong_tail=1), 0.0, now)
    finals += policy.end_of_speech(heard(0.0, 3.0), 0.0, 3.0)[0].words
    # Utterance 2's window starts before the end of the last final (the buffer keeps a pad), so
    # its hypotheses repeat the last words of utterance 1: they must not come back.
    for now in (4.0, 4.5, 5.0):
        policy.feed(heard(1.6, now, wrong_tail=1), 1.6, now)
    finals += policy.end_of_speech(heard(1.6, 5.5), 1.6, 5.5)[0].words
    assert [w.text for w in finals] == [truth(k).text for k in range(11)]
    assert [round(w.start, 2) for w in finals] == [round(truth(k).start, 2) for k in range(11)]


def test_overlap_removed_by_text_when_timestamps_jitter():
    policy = LocalAgreementPolicy()
    policy.feed([Word(0.0, 0.5, "good"), Word(0.6, 1.0, "morning")], 0.0, 1.2)
    (final,) = policy.end_of_speech([Word(0.0, 0.5, "good"), Word(0.6, 1.0, "morning")], 0.0, 1.2)
    # The new window re-hears "morning" with a later timestamp (midpoint past the commit end).
    (interim,) = policy.feed([Word(0.15, 0.5, "morning"), Word(0.7, 1.0, "sir")], 0.8, 2.0)
    assert interim.text == "sir"


def test_words_past_the_heard_audio_are_dropped():
    policy = LocalAgreementPolicy()
    (interim,) = policy.feed([Word(0.0, 0.4, "hello"), Word(1.2, 1.6, "Thank"), Word(1.7, 2.0, "you.")], 0.0, 1.0)
    assert interim.text == "hello" and interim.end <= 1.0


def test_looping_tail_is_cut_to_one_copy():
    loop = [Word(0.1 * i, 0.1 * i + 0.05, t) for i, t in enumerate("so I said that that that that that".split())]
    assert [w.text for w in cut_looping_tail(loop)] == "so I said that".split()
    phrase = "please hold please hold please hold please hold".split()
    words = [Word(0.1 * i, 0.1 * i + 0.05, t) for i, t in enumerate(["sorry", *phrase])]
    assert [w.text for w in cut_looping_tail(words)] == ["sorry", "please", "hold"]
    natural = [Word(0.1 * i, 0.1 * i + 0.05, t) for i, t in enumerate("no, no. thank you thank you".split())]
    assert cut_looping_tail(natural) == natural


def test_loop_that_is_not_an_exact_tail_is_cut_by_compression_ratio():
    text = "I want to cancel my order. " + "I want to cancel my order, I want, " * 8 + "I want to"
    words = [Word(0.1 * i, 0.1 * i + 0.05, t) for i, t in enumerate(text.split())]
    cut = cut_looping_tail(words)
    assert 6 <= len(cut) < len(words) // 2
    assert " ".join(w.text for w in cut).startswith("I want to cancel my order.")


def test_policy_cuts_a_looping_hypothesis_before_it_reaches_a_final():
    policy = LocalAgreementPolicy()
    hyp = [Word(0.0, 0.3, "hold"), Word(0.4, 0.7, "on")] + [Word(0.8 + 0.1 * i, 0.85 + 0.1 * i, "on") for i in range(8)]
    (final,) = policy.end_of_speech(hyp, 0.0, 2.0)
    assert final.text == "hold on"


def test_prompt_is_committed_text_before_the_window_at_most_200_chars():
    policy = LocalAgreementPolicy()
    for now in (1.0, 1.5, 2.0, 3.0):
        policy.feed(heard(0.0, now), 0.0, now)
    assert policy.prompt(before=1.0) == "thank you"
    assert policy.prompt() == "thank you for calling"  # the 2.0 s and 3.0 s hypotheses agree on these
    for n in range(2, 60):
        policy.end_of_speech([Word(0.0, 0.4, f"word{n}")], float(n * 2), float(n * 2 + 1))
    prompt = policy.prompt()
    assert len(prompt) <= 200 and prompt.endswith("word59") and not prompt.startswith(" ")


def test_finalize_committed_keeps_the_unconfirmed_tail_pending():
    policy = LocalAgreementPolicy()
    policy.feed(heard(0.0, 2.0), 0.0, 2.0)
    policy.feed(heard(0.0, 2.5, wrong_tail=1), 0.0, 2.5)
    (final,) = policy.finalize_committed()
    assert final.text == "thank you for calling"
    assert [w.text for w in policy.pending_words] == ["howx"]
    (last,) = policy.end_of_speech(heard(0.0, 3.0), 0.0, 3.0)
    assert last.text == "how can" and last.result_id == "0-1"


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.floats(min_value=0.3, max_value=2.0), min_size=3, max_size=30),
    wrong=st.lists(st.integers(min_value=0, max_value=3), min_size=30, max_size=30),
    final_every=st.integers(min_value=2, max_value=8),
    trim_to_commit=st.booleans(),
)
def test_any_schedule_of_windows_gives_each_word_exactly_once(steps, wrong, final_every, trim_to_commit):
    """Property: whatever the decode times, misheard tails and final points, the concatenated
    finals are the spoken words, in order, each once (a window starts at the last commit or at
    the last final, as the session's buffer does)."""
    policy = LocalAgreementPolicy()
    finals: list[Word] = []
    now, window_start = 0.0, 0.0
    for i, step in enumerate(steps):
        now += step
        if (i + 1) % final_every == 0:
            finals += [w for r in policy.end_of_speech(heard(window_start, now), window_start, now) for w in r.words]
            window_start = max(window_start, policy.committed_end)
        else:
            policy.feed(heard(window_start, now, wrong_tail=wrong[i]), window_start, now)
            if trim_to_commit:
                window_start = max(window_start, policy.committed_end)
    finals += [w for r in policy.end_of_speech(heard(window_start, now), window_start, now) for w in r.words]
    spoken = [truth(k) for k in range(200) if truth(k).end <= now]
    # Two hypotheses may agree on a misheard word ("x" suffix): LocalAgreement commits it. What
    # must hold is that every spoken word is in the finals exactly once, at its place.
    assert [normalize(w.text).removesuffix("x") for w in finals] == [normalize(w.text) for w in spoken]
    assert [round(w.start, 3) for w in finals] == [round(w.start, 3) for w in spoken]
