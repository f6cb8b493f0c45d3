"""`mmar export`: a Hub-ready folder (sharded safetensors, processor, scheduler, pipeline index, remote code, card)."""

import json
import os

import pytest
import torch
from conftest import pretend_logged_in_to_the_hub, tiny_config
from diffusers import DDIMScheduler
from huggingface_hub import HfApi, constants
from transformers import AutoModelForImageTextToText, AutoProcessor

import training.export as export
from modeling_mmar import MMARForConditionalGeneration, MMARPipeline, MMARScheduler
from processors import MMARProcessor, build_tokenizer
from training.cli import main as mmar
from training.data import digits_corpus


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A trained-model folder as `mmar train` leaves it: model, processor, scheduler/ (here with DDIM swapped in)."""
    folder = tmp_path_factory.mktemp("export") / "model"
    tokenizer = build_tokenizer(digits_corpus())
    text_config = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": len(tokenizer),
                   "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    config = tiny_config(text_config=text_config)
    torch.manual_seed(0)
    model = MMARForConditionalGeneration(config)
    model.save_pretrained(folder)
    MMARProcessor.from_model_config(config, tokenizer).save_pretrained(folder)
    DDIMScheduler.from_config(MMARScheduler().config).save_pretrained(folder / "scheduler")
    torch.save({"not": "exported"}, folder / "training_args.bin")  # pickles never leave the training folder
    return folder


def test_export_writes_a_complete_hub_folder(model_dir, tmp_path):
    out = tmp_path / "export"
    assert mmar(["export", str(model_dir), str(out), "--max-shard-size", "100KB"]) == 0

    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / shard).is_file() for shard in shards)
    for name in ("config.json", "generation_config.json", "processor_config.json", "tokenizer.json",
                 "scheduler/scheduler_config.json", "model_index.json", "README.md", "modeling_mmar.py",
                 "configuration_mmar.py", "processing_mmar.py"):
        assert (out / name).is_file(), name
    assert not any(out.glob("*.bin")) and not any(name.startswith(".") for name in os.listdir(tmp_path))
    assert set(json.loads((out / "config.json").read_text())["auto_map"]) == {
        "AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForImageTextToText"}
    # A diffusers custom pipeline: its class and components' code ship with the folder (see test_remote_code).
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_mmar", "MMARPipeline"]
    assert (out / "pipeline_mmar.py").is_file() and (out / "model" / "modeling_mmar.py").is_file()
    assert (out / "processor" / "processing_mmar.py").is_file()
    assert not any((out / "model").glob("*.safetensors"))  # one copy of the weights, at the root

    # The export loads back as the same model, processor and (swapped) scheduler, alone or as a pipeline.
    original = AutoModelForImageTextToText.from_pretrained(model_dir)
    exported = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    batch = processor(text=["a handwritten seven"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(original(**batch).logits, exported(**batch).logits)
    pipe = MMARPipeline.from_pretrained(out)
    assert isinstance(pipe.scheduler, DDIMScheduler) and isinstance(pipe.processor, MMARProcessor)
    assert torch.equal(pipe.model.lm_head.weight, original.lm_head.weight)


def test_incomplete_folder_names_what_is_missing(model_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    with pytest.raises(ValueError, match=r"model\.safetensors.*processor_config\.json.*tokenizer"):
        export.export_model(broken, tmp_path / "out")
    with pytest.raises(ValueError, match="not a folder"):
        export.export_model(tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_a_non_empty_folder(model_dir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        export.export_model(model_dir, tmp_path / "out")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_push_fails_before_writing_anything(model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    # Offline (the test suite runs with HF_HUB_OFFLINE=1).
    assert constants.is_offline_mode()
    assert mmar(["export", str(model_dir), str(out), "--push-to-hub", "someone/mmar"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "offline mode is on" in error  # one line, no traceback
    # Online, but no token.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(export, "get_token", lambda: None)
    with pytest.raises(export.HubAccessError, match="no token"):
        export.export_model(model_dir, out, repo_id="someone/mmar")
    # A token the Hub does not accept (or no network): the check fails, no repo is created.
    monkeypatch.setattr(export, "get_token", lambda: "hf_not_a_real_token")

    def unreachable(self, *args, **kwargs):
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.setattr(HfApi, "whoami", unreachable)
    monkeypatch.setattr(HfApi, "create_repo", lambda *a, **k: pytest.fail("create_repo must not be called"))
    with pytest.raises(export.HubAccessError, match="no route"):
        export.export_model(model_dir, out, repo_id="someone/mmar")
    with pytest.raises(export.HubAccessError, match="namespace"):
        export.export_model(model_dir, out, repo_id="mmar")
    assert not out.exists()


def test_push_uploads_the_exported_folder(model_dir, tmp_path, monkeypatch):
    calls = []
    pretend_logged_in_to_the_hub(monkeypatch, export, calls)

    def upload_folder(self, folder_path, repo_id, **kwargs):
        calls.append(("upload", repo_id, sorted(os.listdir(folder_path))))
        return "https://huggingface.co/someone/mmar/commit/0"

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    out = export.export_model(model_dir, tmp_path / "out", repo_id="someone/mmar", private=True)

    assert calls[0] == ("create", "someone/mmar", {"repo_type": "model", "private": True, "exist_ok": True})
    assert calls[1][0] == "upload" and calls[1][2] == sorted(os.listdir(out))
    assert '"someone/mmar"' in (out / "README.md").read_text()  # the card's snippets load the Hub repo


def test_a_sigterm_while_exporting_leaves_no_partial_folder(model_dir, tmp_path, monkeypatch):
    """`kill` (SIGTERM) in the middle of writing: the command exits 143 and the hidden partial folder is gone."""
    import signal

    def write_then_get_killed(model, processor, scheduler, folder, max_shard_size):
        model.save_pretrained(str(folder))
        os.kill(os.getpid(), signal.SIGTERM)  # delivered here, as from another process
        raise AssertionError("the SIGTERM should have stopped the export")

    monkeypatch.setattr(export, "write_export", write_then_get_killed)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as stopped:
            mmar(["export", str(model_dir), str(tmp_path / "out")])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert os.listdir(tmp_path) == []  # neither out/ nor .out.partial-*


def test_exported_folder_is_readable_by_others(model_dir, tmp_path):
    out = tmp_path / "shared"
    assert mmar(["export", str(model_dir), str(out)]) == 0
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask
