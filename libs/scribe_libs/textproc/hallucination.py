"""Hallucination guard: stock phrases Whisper writes into silence, noise and music.

Whisper was trained on subtitled video, so on audio without speech its decoder tends to emit
what subtitles say at the end of a video: "Thank you for watching", "시청해 주셔서 감사합니다",
"구독과 좋아요 부탁드립니다", a news sign-off ("MBC 뉴스 이덕영입니다") or a subtitle credit
("Subtitles by the Amara.org community", "한글 자막 by ..."). :data:`PHRASES` is that list, as
data; each entry has a stable id, recorded in corrections as ``hallucination:<id>``.

Rule (:func:`HallucinationGuard.check`), per segment:

1. The segment *matches* when it is dominated by listed phrases: the phrases' occurrences cover
   at least ``min_share`` (default 0.8) of its text, compared after :func:`phrase_key`
   normalisation (Unicode NFC, fullwidth ASCII folded, case-folded, punctuation, symbols and
   white space removed, so "Thanks for watching!", "THANKS FOR WATCHING" and NFD-typed Hangul
   match alike and Korean spacing does not matter). A segment made only of punctuation or
   symbols (" .", "♪") matches too (id ``no-text``). A phrase inside a longer real sentence
   covers too little of it and the segment is left alone.
2. A matching segment is DROPPED when its decoder signals say there was no speech:
   ``no_speech_prob`` above ``drop_no_speech_prob`` (default 0.6, Whisper's
   ``no_speech_threshold``) or ``avg_logprob`` below ``drop_avg_logprob`` (default -1.0,
   Whisper's ``log_prob_threshold``). The transcript carries no VAD speech map, so VAD cannot be
   consulted here; with VAD on, Whisper never sees the silent parts in the first place.
3. Otherwise it is kept and flagged ``POSSIBLE_HALLUCINATION``: the words may be real ("thank you"
   said by a caller), but a reader should know.

A drop is never silent: the pipeline records it as a rule correction (``original`` = the
segment's raw text, ``replacement`` = "", ``rule_id`` = ``hallucination:<id>``), so the final
transcript says what was removed.

Sources of the phrase list (third-party reports, checked against what our models do on
tests/fixtures/{silence,noise,hold_music}_10s.wav):

- openai/whisper discussion #928, the community list of hallucinations per language (via
  JSchmie/ScrAIbe ``scraibe/hallucinations.py``, "adapted from" it): the Amara.org subtitle
  credits.
- Vexa-ai/vexa issue #155 (per-language blocklists collected by playing noise to Whisper) and
  zachlatta/freeflow issue #111 (a ``no_speech_prob``-gated phrase list missing "Thank you for
  watching" / "Thanks for watching!", the commonest one).
- VocaHQ/vocalinux PR #334 ("Thank you for watching", "See you next time!" in pauses),
  McCloudS/subgen issue #21 ("Thanks for watching!" repeated over a silent intro),
  woheller69/whisperIME issue #57 ("Thank you for watching!", and "you" for empty input),
  saurabhav88/EnviousWispr issue #452 ("Thank you." on silent or short recordings).
- PocketShell-io/pocketshell issue #452 ("시청해주셔서 감사합니다!" from silence),
  przemek-nowicki/meta-lens-ai issue #26 ("MBC 뉴스 이덕영입니다" after short silences),
  pproenca/dot-skills ``skills/.experimental/audio-voice-recovery/references/transcribe-hallucination.md``
  ("MBC 뉴스", "자막 제공", "please subscribe", "like and subscribe").
- Several open-source Korean filters found by code search list "구독과 좋아요 (부탁드립니다)",
  "다음 영상에서 만나요", "한글자막 by", "자막은 설정에서 ..." and "끝까지 시청해주셔서 감사합니다".
- This project's own measurement (../shared/DESIGN.md): without VAD, tiny.en wrote "Thank you."
  into pauses; on digital silence it writes "You" (no_speech_prob 0.94).

Deliberately not listed: a bare "감사합니다" or "네", the commonest real words of a Korean call.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from scribe_libs.scoring import normalize


def phrase_key(text: str) -> str:
    """The matching form of ``text``: :func:`scribe_libs.scoring.normalize`, no spaces.

    That is NFC, fullwidth ASCII folded, case-folded, no punctuation or symbols (see its docstring
    for each rule's source), with white space and control characters dropped as well: Korean spacing varies
    ("시청해주셔서" / "시청해 주셔서") and a whole-segment match does not need word boundaries.
    """
    return "".join(c for c in normalize(text) if unicodedata.category(c)[0] not in "ZC")


@dataclass(frozen=True)
class Phrase:
    """One known hallucination.

    Attributes:
        id: Stable id, recorded as ``hallucination:<id>``.
        language: Language the phrase is in ("en", "ko").
        text: The phrase as Whisper writes it (for literal phrases and for documentation).
        pattern: A regular expression over :func:`phrase_key` text, for phrases with a variable
            part (a reporter's name, a subtitler's handle); empty for a literal phrase.
    """

    id: str
    language: str
    text: str
    pattern: str = ""

    def regex(self) -> re.Pattern[str]:
        """The compiled matcher over :func:`phrase_key` text."""
        return re.compile(self.pattern or re.escape(phrase_key(self.text)))


#: The known phrases (see the module docstring for the sources). Longer phrases first where one
#: contains another, so the longer one names the match.
PHRASES: tuple[Phrase, ...] = (
    # English: video outros.
    Phrase("thank-you-for-watching", "en", "Thank you for watching", r"thank(?:you|s)(?:so|very)?(?:much)?forwatching"),
    Phrase("please-subscribe", "en", "Please subscribe", r"(?:please)?(?:like(?:and|&)?)?subscribe(?:tomychannel)?"),
    Phrase("see-you-next-time", "en", "See you next time", r"(?:ill)?seeyou(?:inthe)?next(?:time|video)"),
    Phrase("subtitles-by", "en", "Subtitles by the Amara.org community", r"(?:subtitles|captions)by[a-z0-9]{0,30}"),
    Phrase("amara-org", "en", "Amara.org", r"amaraorg(?:community)?"),
    Phrase("thank-you", "en", "Thank you", r"thank(?:you|s)(?:verymuch|somuch)?"),
    Phrase("you", "en", "you", r"^(?:you)+$"),
    # Korean: video outros, news sign-offs, subtitle credits.
    Phrase(
        "ko-thanks-for-watching",
        "ko",
        "시청해 주셔서 감사합니다",
        r"(?:끝까지|오늘도)?시청해주셔서(?:정말)?(?:감사합니다|감사드립니다|고맙습니다)",
    ),
    Phrase(
        "ko-subscribe-like",
        "ko",
        "구독과 좋아요 부탁드립니다",
        r"구독(?:과|와|하고)?좋아요(?:와|및)?(?:알림설정)?(?:까지)?(?:부탁드립니다|부탁드려요|부탁해요|눌러주세요)?",
    ),
    Phrase("ko-next-video", "ko", "다음 영상에서 만나요", r"다음영상에서(?:만나요|뵙겠습니다|만나겠습니다)"),
    Phrase(
        "ko-news-signoff",
        "ko",
        "MBC 뉴스 이덕영입니다",
        r"(?:mbc|kbs|sbs|ytn|jtbc|mbn|obs|tbs)뉴스(?:[가-힣]{2,4}(?:기자)?(?:입니다|였습니다))?",
    ),
    Phrase("ko-subtitle-credit", "ko", "한글 자막 by ...", r"^(?:한글)?자막(?:제공|by|협찬)[a-z0-9가-힣]{0,12}$"),
    Phrase("ko-subtitle-settings", "ko", "자막은 설정에서 선택하실 수 있습니다", r"자막은설정에서선택하실수있습니다"),
)

#: Id recorded for a segment with no letters or digits at all (" .", "♪").
NO_TEXT_ID = "no-text"


class HallucinationSettings(BaseModel):
    """Thresholds of the hallucination guard (nestable in a service's pydantic-settings config)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(True, description="Drop or flag segments that are known Whisper hallucination phrases.")
    min_share: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="A segment matches when listed phrases cover at least this share of its characters "
        "(after normalisation); lower catches a phrase with more around it, and more real sentences.",
    )
    drop_no_speech_prob: float = Field(
        0.6,
        ge=0.0,
        le=1.0,
        description="A matching segment is dropped when no_speech_prob is above this "
        "(Whisper's no_speech_threshold 0.6).",
    )
    drop_avg_logprob: float = Field(
        -1.0,
        description="A matching segment is dropped when avg_logprob is below this (Whisper's log_prob_threshold -1.0).",
    )


@dataclass(frozen=True)
class Verdict:
    """What the guard decided for one segment.

    Attributes:
        phrase_id: Id of the phrase covering most of the segment (or ``no-text``).
        drop: True to remove the segment; False to keep it flagged.
        reason: The signal behind a drop, e.g. "no_speech_prob 0.94 > 0.6"; "" when kept.
    """

    phrase_id: str
    drop: bool
    reason: str = ""


class HallucinationGuard:
    """Matches segments against :data:`PHRASES` and decides drop or flag.

    Args:
        settings: Thresholds; the defaults when None.
        phrases: The phrase list (tests and deployments may pass their own).
    """

    def __init__(self, settings: HallucinationSettings | None = None, phrases: Sequence[Phrase] = PHRASES):
        self.settings = settings or HallucinationSettings()
        self.phrases = [(p.id, p.regex()) for p in phrases]

    def match(self, text: str) -> str | None:
        """Id of the phrase that dominates ``text``, or None (see the module docstring, step 1)."""
        key = phrase_key(text)
        if not key:
            return NO_TEXT_ID if text.strip() else None
        covered = [False] * len(key)
        best: tuple[int, str] | None = None
        for phrase_id, regex in self.phrases:
            length = 0
            for m in regex.finditer(key):
                if m.end() > m.start():
                    for i in range(m.start(), m.end()):
                        covered[i] = True
                    length += m.end() - m.start()
            if length and (best is None or length > best[0]):
                best = (length, phrase_id)
        if best is None or sum(covered) < self.settings.min_share * len(key):
            return None
        return best[1]

    def check(self, text: str, no_speech_prob: float, avg_logprob: float) -> Verdict | None:
        """The verdict for one segment, or None when it is not a known phrase.

        Args:
            text: The segment text as decoded.
            no_speech_prob: 0..1.
            avg_logprob: Mean token log probability (natural log).
        """
        if not self.settings.enabled:
            return None
        phrase_id = self.match(text)
        if phrase_id is None:
            return None
        s = self.settings
        if no_speech_prob > s.drop_no_speech_prob:
            return Verdict(phrase_id, True, f"no_speech_prob {no_speech_prob:.2f} > {s.drop_no_speech_prob:g}")
        if avg_logprob < s.drop_avg_logprob:
            return Verdict(phrase_id, True, f"avg_logprob {avg_logprob:.2f} < {s.drop_avg_logprob:g}")
        return Verdict(phrase_id, False)


__all__ = ["NO_TEXT_ID", "PHRASES", "HallucinationGuard", "HallucinationSettings", "Phrase", "Verdict", "phrase_key"]
