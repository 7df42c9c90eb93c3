"""``scribe transcribe DIR | GLOB | s3://``: input and output paths (pure), then real runs on the harness stack.

The stack is the harness's (real gRPC servers on port 0, nats-server, local object store) with the
packaged ``tiny.en`` model; the CLI reaches it through ``SCRIBE_<SERVICE>_ADDR`` and
``SCRIBE_API_KEY``, as in test_bench.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from scribe_cli import bulk
from scribe_cli.main import main
from scribe_harness import FIXTURES
from scribe_libs.scoring import wer

CLIPS = ("speech_en", "numbers_en", "terms_en")
#: A word each transcript must hold (lower-cased), besides a WER bound against the fixture's text.
KEYWORDS = {"speech_en": "fox", "numbers_en": "noon", "terms_en": "deploy"}


def calls_folder(root: Path, broken: bool = False) -> Path:
    folder = root / "calls"
    folder.mkdir()
    for name in CLIPS:
        shutil.copy(FIXTURES / f"{name}.wav", folder / f"{name}.wav")
    if broken:
        shutil.copy(FIXTURES / "not_audio.wav", folder / "not_audio.wav")
    return folder


# --- which files, which outputs (no stack) ------------------------------------------------------


def test_a_single_file_is_not_bulk_but_folders_globs_and_several_are(tmp_path):
    folder = calls_folder(tmp_path)
    one = str(folder / "speech_en.wav")
    assert not bulk.is_bulk([one])
    assert not bulk.is_bulk([str(folder / "speech_*.wav")])  # a glob of one file: as that file
    assert bulk.is_bulk([str(folder)])
    assert bulk.is_bulk([str(folder / "*.wav")])
    assert bulk.is_bulk([one, str(folder / "terms_en.wav")])
    assert bulk.is_bulk(["s3://bucket/prefix/"])


def test_outputs_go_beside_inputs_or_mirror_them_under_out(tmp_path):
    folder = calls_folder(tmp_path)
    (folder / "2026" / "12").mkdir(parents=True)
    shutil.copy(FIXTURES / "speech_en.wav", folder / "2026" / "12" / "late.flac")
    (folder / "notes.txt").write_text("not audio by suffix")
    beside = bulk.local_items([str(folder)], "srt", None)
    assert sorted(i.output for i in beside) == sorted(
        [folder / f"{n}.srt" for n in CLIPS] + [folder / "2026" / "12" / "late.srt"])
    out = tmp_path / "out"
    mirrored = {Path(i.name).name: i.output for i in bulk.local_items([str(folder)], "txt", out)}
    assert mirrored["late.flac"] == out / "2026" / "12" / "late.txt"
    assert mirrored["speech_en.wav"] == out / "speech_en.txt"
    # A glob and several paths: relative to their deepest common folder.
    globbed = bulk.local_items([str(folder / "*" / "*" / "*.flac"), str(folder / "terms_en.wav")], "vtt", out)
    assert sorted(i.output for i in globbed) == [out / "2026" / "12" / "late.vtt", out / "terms_en.vtt"]


def test_arguments_that_name_nothing_are_refused_with_the_reason(tmp_path, capsys):
    folder = calls_folder(tmp_path)
    with pytest.raises(bulk.BulkError, match="no file matches"):
        bulk.local_items([str(folder / "*.mp3")], "txt", None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(bulk.BulkError, match="no audio files"):
        bulk.local_items([str(tmp_path / "empty")], "txt", None)
    assert main(["transcribe", "s3://bucket/calls/", str(folder)]) == 2
    assert "need --out DIR" in capsys.readouterr().err
    assert main(["transcribe", str(folder), str(tmp_path / "missing.wav")]) == 2
    assert "missing.wav: no such file or folder" in capsys.readouterr().err


# --- through the platform -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def platform(stack_factory):
    stack = stack_factory()
    stack.start("results")
    stack.start("ingest", pools={"cpu": ["tiny.en"]})
    stack.start("postprocess")
    stack.start("transcriber", models=["tiny.en"])
    return stack


@pytest.fixture
def cli_env(platform, monkeypatch, tmp_path):
    monkeypatch.setenv("SCRIBE_HOME", str(tmp_path / "home"))  # no embedded stack of the user's
    monkeypatch.setenv("SCRIBE_INGEST_ADDR", platform.addresses["ingest"])
    monkeypatch.setenv("SCRIBE_RESULTS_ADDR", platform.addresses["results"])
    monkeypatch.setenv("SCRIBE_API_KEY", platform.keys["admin"])
    return platform


def assert_transcripts(outputs: dict[str, Path]) -> None:
    for name, path in outputs.items():
        text = path.read_text(encoding="utf-8")
        assert KEYWORDS[name] in text.lower(), (name, text)
        # tiny.en hears "Kubernetes with vLLM" as "Cuba meets with the other end": 0.625 on terms_en.
        assert wer((FIXTURES / f"{name}.txt").read_text(), text) <= 0.75, (name, text)


@pytest.mark.slow
def test_a_folder_is_transcribed_beside_its_files_a_broken_one_reported_and_a_rerun_skips(cli_env, tmp_path, capsys):
    folder = calls_folder(tmp_path, broken=True)
    code = main(["transcribe", str(folder), "--language", "en", "--concurrency", "2"])
    out, err = capsys.readouterr()
    assert code == 1, err  # one file failed
    assert out == ""  # transcripts went to files, not stdout
    assert_transcripts({name: folder / f"{name}.txt" for name in CLIPS})
    assert not (folder / "not_audio.txt").exists()
    table = err[err.index("FILE"):]
    assert "not_audio.wav" in table and "UNDECODABLE_AUDIO" in table, err
    assert "3 written, 0 skipped, 1 failed" in err

    before = {name: (folder / f"{name}.txt").stat().st_mtime_ns for name in CLIPS}
    assert main(["transcribe", str(folder), "--language", "en"]) == 1
    err = capsys.readouterr().err
    assert "1 to submit, 3 skipped" in err and "not_audio.wav" in err
    assert {name: (folder / f"{name}.txt").stat().st_mtime_ns for name in CLIPS} == before

    (folder / "not_audio.wav").unlink()
    assert main(["transcribe", str(folder), "--overwrite", "--format", "srt", "--language", "en"]) == 0
    assert "00:00:00" in (folder / "speech_en.srt").read_text()


@pytest.mark.slow
def test_a_glob_mirrors_its_files_under_out(cli_env, tmp_path, capsys):
    root = tmp_path / "in"
    for sub, name in (("a", "speech_en"), ("b", "terms_en")):
        (root / sub).mkdir(parents=True)
        shutil.copy(FIXTURES / f"{name}.wav", root / sub / f"{name}.wav")
    out = tmp_path / "out"
    assert main(["transcribe", str(root / "*" / "*.wav"), "--out", str(out), "-q"]) == 0, capsys.readouterr().err
    assert_transcripts({"speech_en": out / "a" / "speech_en.txt", "terms_en": out / "b" / "terms_en.txt"})
    assert not (root / "a" / "speech_en.txt").exists()


@pytest.mark.slow
def test_an_s3_prefix_is_transcribed_by_source_uri_into_out(cli_env, tmp_path, capsys, monkeypatch):
    bucket = cli_env.workdir / "objects" / "bulk-data"
    (bucket / "calls" / "day1").mkdir(parents=True)
    shutil.copy(FIXTURES / "speech_en.wav", bucket / "calls" / "day1" / "speech_en.wav")
    shutil.copy(FIXTURES / "terms_en.wav", bucket / "calls" / "terms_en.wav")
    (bucket / "calls" / "readme.md").write_text("not audio")
    monkeypatch.setenv("SCRIBE_STORE__KIND", "local")
    monkeypatch.setenv("SCRIBE_STORE__ROOT", str(cli_env.workdir / "objects"))
    out = tmp_path / "out"
    assert main(["transcribe", "s3://bulk-data/calls/", "--out", str(out)]) == 0, capsys.readouterr().err
    assert_transcripts({"speech_en": out / "day1" / "speech_en.txt", "terms_en": out / "terms_en.txt"})
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["speech_en.txt", "terms_en.txt"]


@pytest.mark.slow
def test_a_single_file_still_prints_its_transcript(cli_env, tmp_path, capsys):
    assert main(["transcribe", str(FIXTURES / "terms_en.wav"), "-q"]) == 0
    assert "deploy" in capsys.readouterr().out.lower()
    assert main(["transcribe", str(FIXTURES / "terms_*.wav"), "-q"]) == 0  # a glob of one file: the same
    assert "deploy" in capsys.readouterr().out.lower()
