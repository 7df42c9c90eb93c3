"""smooth_languages: per-chunk language detections of a code-switching call (issue 13)."""

from scribe_transcriber.engine import MIN_LANGUAGE_PROBABILITY, smooth_languages


def test_confident_detections_are_kept():
    assert smooth_languages([("en", 0.99), ("de", 0.86), ("de", 0.99)]) == ["en", "de", "de"]


def test_an_unclear_chunk_takes_the_language_before_it():
    # multilingual.mp3 with base: "Publish!" (0.7 s) scored German at 0.02 between English chunks
    detected = [("en", 0.92), ("en", 0.86), ("de", 0.02), ("en", 0.93), ("de", 0.99), ("en", 0.37), ("de", 0.99)]
    assert smooth_languages(detected) == ["en", "en", "en", "en", "de", "de", "de"]


def test_unclear_first_chunks_take_the_first_confident_language():
    assert smooth_languages([("en", 0.1), ("ko", 0.3), ("ko", 0.95), ("en", 0.9)]) == ["ko", "ko", "ko", "en"]


def test_with_nothing_confident_each_chunk_keeps_its_own():
    assert smooth_languages([("en", 0.2), ("ko", 0.3)]) == ["en", "ko"]
    assert smooth_languages([]) == []


def test_the_threshold_is_inclusive_and_configurable():
    at = MIN_LANGUAGE_PROBABILITY
    assert smooth_languages([("en", 0.9), ("de", at)]) == ["en", "de"]
    assert smooth_languages([("en", 0.9), ("de", 0.7)], min_probability=0.8) == ["en", "en"]
