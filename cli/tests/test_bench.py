"""``scribe bench``: dataset loaders (pure) and a real run of the committed fixtures through the stack.

The run uses the harness stack (real gRPC servers on port 0, nats-server, local object store) with
the packaged ``tiny.en`` and ``base`` models; the CLI reaches it through ``SCRIBE_<SERVICE>_ADDR``
and ``SCRIBE_API_KEY``, as it would reach a deployed one.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from scribe_cli import datasets
from scribe_cli.bench import FileResult, ModelResult, load_terms, markdown, parse_config
from scribe_cli.main import main
from scribe_harness import FIXTURES
from scribe_libs.scoring import word_errors

CLIPS = ("speech_en", "numbers_en", "terms_en")


def fixture_folder(root: Path) -> Path:
    folder = root / "fixtures"
    folder.mkdir()
    for name in CLIPS:
        (folder / f"{name}.wav").symlink_to(FIXTURES / f"{name}.wav")
        shutil.copy(FIXTURES / f"{name}.txt", folder / f"{name}.txt")
    (folder / "no_transcript.wav").symlink_to(FIXTURES / "speech_en_8k_mulaw.wav")
    return folder


# --- loaders (no stack) ---------------------------------------------------------------------------


def test_folder_pairs_audio_with_the_transcript_beside_it(tmp_path):
    dataset = datasets.load(str(fixture_folder(tmp_path)))
    assert dataset.kind == "folder"
    assert [u.name for u in dataset.utterances] == sorted(f"{n}.wav" for n in CLIPS)
    assert dataset.skipped == ["no_transcript.wav"]
    terms = next(u for u in dataset.utterances if u.name == "terms_en.wav")
    assert terms.reference == "We deploy the model on Kubernetes with vLLM."


def test_nemo_manifest_paths_are_relative_to_the_manifest(tmp_path):
    (tmp_path / "audio").mkdir()
    manifest = tmp_path / "test.jsonl"
    rows = [{"audio_filepath": "audio/a.wav", "text": "안녕하세요", "duration": 1.0},
            {"audio_filepath": str(FIXTURES / "speech_en.wav"), "text": "quick"}]
    manifest.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    dataset = datasets.load(str(manifest))
    assert dataset.kind == "jsonl"
    assert [(u.path, u.reference) for u in dataset.utterances] == [
        (tmp_path / "audio" / "a.wav", "안녕하세요"), (FIXTURES / "speech_en.wav", "quick")]


def test_lhotse_pair_joins_supervisions_in_time_order(tmp_path):
    def write(name: str, rows: list[dict]) -> Path:
        path = tmp_path / name
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        return path

    write("ko_recordings_test.jsonl.gz", [
        {"id": "rec1", "sources": [{"type": "file", "channels": [0], "source": str(FIXTURES / "speech_en.wav")}],
         "sampling_rate": 16000, "num_samples": 16000, "duration": 1.0},
        {"id": "rec2", "sources": [{"type": "file", "channels": [0], "source": "b.wav"}],
         "sampling_rate": 16000, "num_samples": 16000, "duration": 1.0},
    ])
    sups = write("ko_supervisions_test.jsonl.gz", [
        {"id": "s2", "recording_id": "rec1", "start": 2.0, "duration": 1.0, "channel": 0, "text": "둘째"},
        {"id": "s1", "recording_id": "rec1", "start": 0.0, "duration": 1.0, "channel": 0, "text": "첫째"},
        {"id": "s3", "recording_id": "rec2", "start": 0.0, "duration": 1.0, "channel": 0, "text": "셋째"},
    ])
    for spec in (tmp_path, sups, tmp_path / "ko_recordings_test.jsonl.gz"):
        dataset = datasets.load(str(spec))
        assert dataset.kind == "lhotse"
        assert [(u.name, u.reference) for u in dataset.utterances] == [("rec1", "첫째 둘째"), ("rec2", "셋째")]
        assert dataset.utterances[1].path == tmp_path / "b.wav"


def test_bad_arguments_say_what_was_expected(tmp_path, capsys):
    with pytest.raises(datasets.DatasetError, match="no such folder"):
        datasets.load(str(tmp_path / "missing"))
    (tmp_path / "notes.csv").write_text("a,b\n")
    with pytest.raises(datasets.DatasetError, match="expected a folder"):
        datasets.load(str(tmp_path / "notes.csv"))
    assert main(["bench", str(tmp_path / "notes.csv")]) == 2
    assert "expected a folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="key=value"):
        parse_config(["temperature=0.2"])


def test_config_and_terms_parse(tmp_path):
    config = parse_config(["language=ko", "beam_size=5", "vad_filter=false", "hotwords=vLLM, Kubernetes"])
    assert (config.language, config.beam_size, config.vad_filter, list(config.hotwords)) == (
        "ko", 5, False, ["vLLM", "Kubernetes"])
    terms = tmp_path / "terms.txt"
    terms.write_text("# infra\nvLLM\nKubernetes  # orchestration\n\n", encoding="utf-8")
    assert load_terms(terms) == ["vLLM", "Kubernetes"]


def test_figures_are_corpus_level_and_a_failed_job_shows_in_the_table():
    ok = FileResult("long.wav", "a b c d e f g h i j", "a b c d e f g h i j", audio_seconds=10.0,
                    processing_seconds=2.0)
    ok.words = word_errors(ok.reference, ok.hypothesis)
    bad = FileResult("short.wav", "x y", "x z", audio_seconds=2.0, processing_seconds=1.0)
    bad.words = word_errors(bad.reference, bad.hypothesis)
    failed = FileResult("broken.wav", "p q", error="FAILED: UNDECODABLE_AUDIO")
    failed.words = word_errors(failed.reference, "")
    run = ModelResult("base", [ok, bad, failed], wall_seconds=5.0)
    assert run.wer == pytest.approx(3 / 14)  # (0 + 1 + 2) / (10 + 2 + 2), not the mean of the rates
    assert run.rtf == pytest.approx(3.0 / 12.0)  # failed jobs have no processing time to count
    assert run.term_retention is None
    table = markdown([run])
    assert "| base | 21.4% |" in table and "3 (1 failed)" in table
    assert run.as_json()["files"][2]["error"] == "FAILED: UNDECODABLE_AUDIO"


# --- through the platform ---------------------------------------------------------------------------


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
    monkeypatch.setenv("SCRIBE_HOME", str(tmp_path / "home"))  # no embedded stack of the user's
    monkeypatch.setenv("SCRIBE_INGEST_ADDR", platform.addresses["ingest"])
    monkeypatch.setenv("SCRIBE_RESULTS_ADDR", platform.addresses["results"])
    monkeypatch.setenv("SCRIBE_API_KEY", platform.keys["admin"])
    return platform


@pytest.mark.slow
def test_bench_prints_both_models_side_by_side_and_writes_fractions(cli_env, tmp_path, capsys):
    folder = fixture_folder(tmp_path)
    glossary = tmp_path / "terms.txt"
    glossary.write_text("Kubernetes\nvLLM\n", encoding="utf-8")
    report = tmp_path / "bench.json"
    code = main(["bench", str(folder), "--models", "base,tiny.en", "--config", "language=en",
                 "--glossary", str(glossary), "--json", str(report)])
    out, err = capsys.readouterr()
    print(out)  # the table, for the log (pytest -s)
    assert code == 0, err
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert {"base", "tiny.en"} <= set(rows), out
    assert "no_transcript.wav" in err  # skipped, and said so
    data = json.loads(report.read_text())
    assert set(data) == {"base", "tiny.en"}
    for model, figures in data.items():
        assert len(figures["files"]) == len(CLIPS), model
        assert figures["failed"] == 0, figures
        for key in ("wer", "cer", "rtf", "term_retention"):
            assert 0.0 <= figures[key] <= 1.0, (model, key, figures[key])
        assert figures["wall_seconds"] > 0
        for f in figures["files"]:
            assert 0.0 <= f["wer"] <= 1.0 and 0.0 <= f["cer"] <= 1.0, f
            assert f["reference"] and f["hypothesis"], f
        # Clear espeak speech, but numbers_en is read out ("five five five") and the models write
        # digits, which scoring counts as errors (numerals are kept as written): measured 0.38 for
        # tiny.en on 2 cores.
        assert figures["wer"] <= 0.6, (model, [f["hypothesis"] for f in figures["files"]])
        assert figures["config"] == {"model": model, "language": "en"}


@pytest.mark.slow
def test_bench_reads_an_s3_prefix_through_the_platform_store(cli_env, tmp_path, capsys, monkeypatch):
    bucket = cli_env.workdir / "objects" / "bench-data"
    (bucket / "calls").mkdir(parents=True)
    shutil.copy(FIXTURES / "speech_en.wav", bucket / "calls" / "speech_en.wav")
    shutil.copy(FIXTURES / "speech_en.txt", bucket / "calls" / "speech_en.txt")
    monkeypatch.setenv("SCRIBE_STORE__KIND", "local")
    monkeypatch.setenv("SCRIBE_STORE__ROOT", str(cli_env.workdir / "objects"))
    report = tmp_path / "s3.json"
    assert main(["bench", "s3://bench-data/calls/", "--models", "tiny.en", "--json", str(report)]) == 0
    files = json.loads(report.read_text())["tiny.en"]["files"]
    assert [f["path"] for f in files] == ["calls/speech_en.wav"]
    assert files[0]["wer"] <= 0.3, files[0]
    assert "| tiny.en |" in capsys.readouterr().out
