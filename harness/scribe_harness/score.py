"""Word error rate as the reference recordings define it (../shared/data/README.md)."""

from __future__ import annotations


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate after lower-casing and removing punctuation (as ../shared/data/README.md).

    Any whitespace, newlines included, separates words.
    """
    import jiwer

    transform = jiwer.Compose(
        [jiwer.SubstituteRegexes({r"\s+": " "}), jiwer.ToLowerCase(), jiwer.RemovePunctuation(),
         jiwer.RemoveMultipleSpaces(), jiwer.Strip(), jiwer.ReduceToListOfListOfWords()]
    )
    return jiwer.wer(reference, hypothesis, reference_transform=transform, hypothesis_transform=transform)
