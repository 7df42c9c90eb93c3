"""``scribe export``: jobs run on the harness stack exported as Lhotse manifests and read back.

The manifests are read back with the project's own Lhotse reader (scribe_cli.datasets, which
``scribe bench`` uses) and as plain JSON; with the ``lhotse`` package importable also with
``lhotse.load_manifest`` (skipped otherwise: lhotse requires torch, which the dev environment
does not install).
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from scribe.v1 import results_pb2, results_pb2_grpc, transcript_pb2
from scribe_cli import datasets
from scribe_cli.export import RECORDINGS, SUPERVISIONS, Audio, Exported, apply_comparison, supervision_dicts
from scribe_cli.main import main
from scribe_harness import FIXTURES


def read(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_segments_become_supervisions_with_speaker_channel_and_confidence():
    from scribe.v1 import jobs_pb2

    job = jobs_pb2.Job(job_id="j1", language="ko")
    job.spec.config.enable_separate_recognition_per_channel = True
    transcript = transcript_pb2.Transcript(language="ko", model="base", segments=[
        transcript_pb2.Segment(id=0, start=0.2, end=1.5, text=" 안녕하세요 ", channel=0, role="agent",
                               avg_logprob=-0.25, flags=["LOW_WORD_PROBABILITY"]),
        transcript_pb2.Segment(id=1, start=1.0, end=9.0, text="네", channel=1, language="en"),
        transcript_pb2.Segment(id=2, start=2.0, end=2.5, text="  ", channel=1),
    ])
    sups = supervision_dicts(job, transcript, Audio(Path("/a.wav"), 8000, 8000 * 3, 2))
    assert [(s["start"], s["duration"], s["channel"], s["speaker"], s["text"], s["language"]) for s in sups] == [
        (0.2, 1.3, 0, "agent", "안녕하세요", "ko"), (1.0, 2.0, 1, "ch1", "네", "en")]  # clipped to 3 s; blank dropped
    assert sups[0]["custom"]["avg_logprob"] == -0.25 and sups[0]["custom"]["flags"] == ["LOW_WORD_PROBABILITY"]
    job.spec.config.enable_separate_recognition_per_channel = False  # mixed down: every channel
    assert supervision_dicts(job, transcript, Audio(Path("/a.wav"), 8000, 8000 * 3, 2))[0]["channel"] == [0, 1]


def test_comparison_matches_segments_by_overlap_and_drops_disagreement():
    from scribe.v1 import jobs_pb2

    job = jobs_pb2.Job(job_id="j1")
    mine = transcript_pb2.Transcript(language="en", segments=[
        transcript_pb2.Segment(id=0, start=0.0, end=2.0, text="Deploy on Kubernetes."),
        transcript_pb2.Segment(id=1, start=2.0, end=4.0, text="with vLLM"),
        transcript_pb2.Segment(id=2, start=4.0, end=5.0, text="thank you"),
    ])
    audio = Audio(Path("/a.wav"), 16000, 16000 * 5, 1)
    exported = Exported(job, audio, mine, {}, supervision_dicts(job, mine, audio))
    other = transcript_pb2.Transcript(segments=[
        transcript_pb2.Segment(start=0.0, end=1.1, text="deploy on"),  # two segments make up the first
        transcript_pb2.Segment(start=1.1, end=2.2, text="kubernetes"),  # mostly inside the first
        transcript_pb2.Segment(start=2.1, end=4.0, text="with the other end"),
    ])
    apply_comparison(exported, other, "base", max_cer=0.1)
    assert [s["text"] for s in exported.supervisions] == ["Deploy on Kubernetes."]
    assert exported.supervisions[0]["custom"]["compare_text"] == "deploy on kubernetes"
    assert exported.supervisions[0]["custom"]["compare_cer"] == 0.0
    assert exported.dropped == 2  # "with vLLM" disagrees; "thank you" has no counterpart (CER 1.0)


def test_export_needs_jobs_and_an_out_folder(tmp_path, capsys):
    assert main(["export", "--out", str(tmp_path)]) == 2
    assert "by id or select them with --label" in capsys.readouterr().err
    assert main(["export", "--label", "novalue", "--out", str(tmp_path)]) == 2


# --- through the platform -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def platform(stack_factory):
    stack = stack_factory()
    models = ["tiny.en", "base"]
    stack.start("results")
    stack.start("ingest", pools={"cpu": models})
    stack.start("postprocess")
    stack.start("transcriber", models=models)
    return stack


@pytest.fixture
def cli_env(platform, monkeypatch, tmp_path):
    monkeypatch.setenv("SCRIBE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SCRIBE_INGEST_ADDR", platform.addresses["ingest"])
    monkeypatch.setenv("SCRIBE_RESULTS_ADDR", platform.addresses["results"])
    monkeypatch.setenv("SCRIBE_API_KEY", platform.keys["admin"])
    # The platform's object store, where retained audio is (as `scribe up`'s state would say).
    monkeypatch.setenv("SCRIBE_STORE__KIND", "local")
    monkeypatch.setenv("SCRIBE_STORE__ROOT", str(platform.workdir / "objects"))
    return platform


def submit(folder: Path, label: str, *extra: str) -> None:
    assert main(["transcribe", str(folder), "--label", label, "--model", "tiny.en", "--language", "en",
                 "--out", str(folder.parent / f"{folder.name}-out"), "-q", *extra]) == 0


def clips(root: Path, name: str, *clip_names: str) -> Path:
    folder = root / name
    folder.mkdir()
    for clip in clip_names:
        shutil.copy(FIXTURES / f"{clip}.wav", folder / f"{clip}.wav")
    return folder


def transcripts(platform, job_ids) -> dict[str, transcript_pb2.Transcript]:  # noqa: ANN001
    stub = results_pb2_grpc.ResultsStub(platform.channel("results"))
    return {job_id: stub.GetTranscript(results_pb2.GetTranscriptRequest(
        job_id=job_id, format=transcript_pb2.TRANSCRIPT_FORMAT_JSON)).transcript for job_id in job_ids}


@pytest.mark.slow
def test_retained_jobs_export_by_label_and_read_back(cli_env, tmp_path, capsys):
    submit(clips(tmp_path, "calls", "speech_en", "terms_en"), "batch=export-1", "--retain-audio", "--word-timestamps")
    submit(clips(tmp_path, "other", "numbers_en"), "batch=export-other", "--retain-audio")
    out = tmp_path / "dataset"
    code = main(["export", "--label", "batch=export-1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err

    recordings, supervisions = read(out / RECORDINGS), read(out / SUPERVISIONS)
    assert len(recordings) == 2  # the other label's job is not there
    expected = transcripts(cli_env, [r["id"] for r in recordings])
    for rec in recordings:
        source = Path(rec["sources"][0]["source"])
        assert source.is_absolute() and source.parent == (out / "audio").resolve() and source.is_file()
        assert source.read_bytes() in {(FIXTURES / f"{c}.wav").read_bytes() for c in ("speech_en", "terms_en")}
        assert rec["sampling_rate"] == 16000 and rec["channel_ids"] == [0]
        assert rec["duration"] == pytest.approx(rec["num_samples"] / 16000)
        sups = [s for s in supervisions if s["recording_id"] == rec["id"]]
        segments = [s for s in expected[rec["id"]].segments if s.text.strip()]
        assert [(s["start"], s["duration"], s["text"], s["speaker"], s["channel"]) for s in sups] == [
            (round(g.start, 3), round(round(g.end, 3) - round(g.start, 3), 3), g.text.strip(), "ch0", 0)
            for g in segments]
        assert all(s["language"] == "en" and s["custom"]["model"] == "tiny.en" for s in sups)
        assert all("avg_logprob" in s["custom"] and "flags" in s["custom"] for s in sups)
        assert all(len(s["alignment"]["word"]) >= 1 for s in sups)  # --word-timestamps

    # The project's own Lhotse reader (what `scribe bench DIR` runs) finds the pair in the folder.
    dataset = datasets.load(str(out))
    assert dataset.kind == "lhotse" and len(dataset.utterances) == 2
    assert any("fox" in u.reference.lower() for u in dataset.utterances)


@pytest.mark.slow
def test_jobs_without_retained_audio_are_refused_unless_audio_dir_has_them(cli_env, tmp_path, capsys):
    folder = clips(tmp_path, "plain", "terms_en")
    submit(folder, "batch=export-2")  # no --retain-audio: the original is deleted after transcription
    out = tmp_path / "dataset"
    assert main(["export", "--label", "batch=export-2", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "1 job(s) not exported" in err and "not retained" in err and "--audio-dir" in err, err
    assert read(out / RECORDINGS) == []

    assert main(["export", "--label", "batch=export-2", "--out", str(out), "--audio-dir", str(folder)]) == 0
    (rec,) = read(out / RECORDINGS)
    assert rec["sources"][0]["source"] == str((folder / "terms_en.wav").resolve())  # referenced, not copied
    assert any("deploy" in s["text"].lower() for s in read(out / SUPERVISIONS))

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    shutil.copy(FIXTURES / "speech_en.wav", wrong / "terms_en.wav")  # same name, other audio
    assert main(["export", "--label", "batch=export-2", "--out", str(out), "--audio-dir", str(wrong)]) == 1
    assert "not the file this job transcribed" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_model_keeps_segments_that_agree(cli_env, tmp_path, capsys):
    submit(clips(tmp_path, "cmp", "speech_en", "terms_en"), "batch=export-3", "--retain-audio")
    out = tmp_path / "dataset"
    code = main(["export", "--label", "batch=export-3", "--out", str(out), "--compare-model", "base",
                 "--max-cer", "0.2"])
    err = capsys.readouterr().err
    assert code == 0, err
    sups = read(out / SUPERVISIONS)
    assert "dropped by --compare-model base" in err
    # speech_en is clear enough for both models; tiny.en's "Cuba meets" for "Kubernetes" is not.
    assert any("fox" in s["text"].lower() for s in sups), sups
    for s in sups:
        assert s["custom"]["compare_model"] == "base" and s["custom"]["compare_cer"] <= 0.2, s


@pytest.mark.slow
def test_manifests_load_with_lhotse_when_installed(cli_env, tmp_path, capsys):
    lhotse = pytest.importorskip("lhotse", reason="lhotse (which requires torch) is not installed")
    submit(clips(tmp_path, "lh", "speech_en"), "batch=export-4", "--retain-audio", "--word-timestamps")
    out = tmp_path / "dataset"
    assert main(["export", "--label", "batch=export-4", "--out", str(out)]) == 0, capsys.readouterr().err
    recordings = lhotse.load_manifest(out / RECORDINGS)
    supervisions = lhotse.load_manifest(out / SUPERVISIONS)
    assert isinstance(recordings, lhotse.RecordingSet) and isinstance(supervisions, lhotse.SupervisionSet)
    (rec,) = list(recordings)
    assert rec.load_audio().shape == (1, rec.num_samples)
    assert all(s.recording_id == rec.id and s.speaker == "ch0" for s in supervisions)
    assert any(item.symbol.lower().startswith("fox") for s in supervisions for item in s.alignment["word"])
    assert all("avg_logprob" in s.custom for s in supervisions)
    lhotse.validate_recordings_and_supervisions(recordings, supervisions)
