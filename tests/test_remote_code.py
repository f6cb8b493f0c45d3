"""Remote code: a saved MMAR folder carries its own code and loads where the mmar-hf packages are NOT installed."""

import json
import os
import site
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import digits_to_pixel_values, tiny_config
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from modeling_mmar import MMARForConditionalGeneration, MMARModel
from processors import MMARProcessor, build_tokenizer
from training.data import digits_corpus

# Runs in a fresh interpreter started with -S: no site module, so no .pth file runs and an editable install of
# mmar-hf (its path entry or import finder) is invisible; PYTHONPATH holds only the site-packages folders.
REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

    folder, inputs_file, outputs_file = sys.argv[1:4]
    report = {name: importlib.util.find_spec(name) is not None for name in ("modeling_mmar", "processors", "training")}
    try:
        AutoModelForImageTextToText.from_pretrained(folder)
        report["refused_without_trust"] = False
    except ValueError as error:  # stdin is closed: the interactive prompt fails at once
        report["refused_without_trust"] = "trust_remote_code=True" in str(error)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    report["classes"] = {name: f"{type(obj).__module__}.{type(obj).__name__}"
                         for name, obj in (("config", config), ("model", model), ("processor", processor))}
    report["auto_model"] = type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__
    report["causal_lm"] = type(AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)).__name__

    inputs = load_file(inputs_file)
    text = processor(text=["<img>What digit is this?"], images=[inputs["image"]], return_tensors="pt")
    prompt = processor(text=["a handwritten seven"], generation_mode="image", return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                       pixel_values=text["pixel_values"]).logits
        answer = model.generate(**text, max_new_tokens=3, do_sample=False)
        image = model.generate(**prompt, generation_mode="image", num_iter=2, num_inference_steps=3,
                               generator=torch.Generator().manual_seed(0), output_type="pt", show_progress=False)
    save_file({"input_ids": text["input_ids"], "pixel_values": text["pixel_values"], "logits": logits,
               "answer": answer, "image": image.contiguous()}, outputs_file)
    print("REPORT", json.dumps(report))
    """
)


def assert_the_installed_code_gives_the_same(remote: dict, model, processor, local: dict) -> torch.Tensor:
    """REMOTE_SCRIPT's logits, greedy answer and generated image (`remote`) equal the installed code's on the same
    understanding inputs `local`; returns the image."""
    prompt = processor(text=["a handwritten seven"], generation_mode="image", return_tensors="pt")
    with torch.no_grad():
        logits = model(**local).logits
        answer = model.generate(**local, max_new_tokens=3, do_sample=False)
        generated = model.generate(**prompt, generation_mode="image", num_iter=2, num_inference_steps=3,
                                   generator=torch.Generator().manual_seed(0), output_type="pt", show_progress=False)
    torch.testing.assert_close(remote["logits"], logits, rtol=0, atol=1e-6)
    assert torch.equal(remote["answer"], answer)
    torch.testing.assert_close(remote["image"], generated, rtol=0, atol=1e-6)
    return generated


def isolated_python_env(tmp_path) -> dict:
    site_dirs = [d for d in site.getsitepackages() if os.path.isdir(d)]
    for folder in site_dirs:  # a plain (non-editable) install would make the packages importable anyway
        assert not os.path.exists(os.path.join(folder, "modeling_mmar")), folder
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env.update(PYTHONPATH=os.pathsep.join(site_dirs), HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"),
               PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1")
    return env


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("remote") / "mmar-tiny"
    tokenizer = build_tokenizer(digits_corpus())
    config = tiny_config(text_config={"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
                                      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                      "vocab_size": len(tokenizer), "pad_token_id": 0, "bos_token_id": 1,
                                      "eos_token_id": 2})
    torch.manual_seed(0)
    model = MMARForConditionalGeneration(config).eval()
    # The diffusion head starts at exactly 0 (zero-initialised outputs); perturb it so images depend on it.
    with torch.no_grad():
        for parameter in model.diffusion_head.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    model.save_pretrained(folder)  # writes every auto_map entry itself
    processor = MMARProcessor.from_model_config(config, tokenizer)
    processor.save_pretrained(folder)
    return folder, model, processor


def test_save_pretrained_writes_code_and_auto_map(saved_model):
    folder, _, _ = saved_model
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_mmar.MMARConfig",
        "AutoModelForImageTextToText": "modeling_mmar.MMARForConditionalGeneration",
        "AutoModel": "modeling_mmar.MMARModel",
        "AutoModelForCausalLM": "modeling_mmar.MMARForConditionalGeneration",
    }
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_mmar.MMARProcessor"
    for name in ("configuration_mmar.py", "modeling_mmar.py", "diffusion_head_mmar.py", "generation_mmar.py",
                 "sampling_mmar.py", "convert_text_model_to_mmar.py", "processing_mmar.py", "image_processing_mmar.py"):
        assert (folder / name).is_file(), name


def test_installed_package_needs_no_trust_remote_code(saved_model):
    folder, model, _ = saved_model
    assert type(AutoModelForImageTextToText.from_pretrained(folder)) is MMARForConditionalGeneration
    assert type(AutoModel.from_pretrained(folder)) is MMARModel
    assert type(AutoModelForCausalLM.from_pretrained(folder)) is MMARForConditionalGeneration
    assert type(AutoProcessor.from_pretrained(folder)) is MMARProcessor


def test_loads_and_matches_where_the_package_is_not_installed(saved_model, tmp_path, digits):
    folder, model, processor = saved_model
    images, _ = digits
    image = digits_to_pixel_values(images[7:8])[0].add(1).div(2)  # [1, 8, 8] in [0, 1]
    save_file({"image": image.contiguous()}, tmp_path / "inputs.safetensors")
    script = tmp_path / "script" / "remote_check.py"
    script.parent.mkdir()
    script.write_text(REMOTE_SCRIPT)

    result = subprocess.run(
        [sys.executable, "-S", str(script), str(folder), str(tmp_path / "inputs.safetensors"),
         str(tmp_path / "outputs.safetensors")],
        cwd=tmp_path, env=isolated_python_env(tmp_path), capture_output=True, text=True, timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.split("REPORT ", 1)[1])

    assert report["modeling_mmar"] is False and report["processors"] is False and report["training"] is False
    assert report["refused_without_trust"] is True
    assert all(name.startswith("transformers_modules.") for name in report["classes"].values()), report["classes"]
    assert report["classes"]["model"].endswith("modeling_mmar.MMARForConditionalGeneration")
    assert report["classes"]["processor"].endswith("processing_mmar.MMARProcessor")
    assert (report["auto_model"], report["causal_lm"]) == ("MMARModel", "MMARForConditionalGeneration")

    # Same tokens, same pixels, same logits, same greedy answer and the same generated image as the installed code.
    remote = load_file(tmp_path / "outputs.safetensors")
    local = processor(text=["<img>What digit is this?"], images=[image], return_tensors="pt")
    assert torch.equal(remote["input_ids"], local["input_ids"])
    assert torch.equal(remote["pixel_values"], local["pixel_values"])
    generated = assert_the_installed_code_gives_the_same(remote, model, processor, local)
    assert generated.std() > 0  # the images really came from the (perturbed) head


WITHOUT_DIFFUSERS_SCRIPT = textwrap.dedent(
    """
    import glob, json, os, sys
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.dynamic_module_utils import check_imports

    folder = sys.argv[1]
    report = {}
    try:
        import diffusers  # noqa: F401
        report["diffusers_importable"] = True
    except ImportError:
        report["diffusers_importable"] = False
    # What transformers checks for each code file it fetches from the Hub.
    report["import_check"] = {}
    for path in sorted(glob.glob(os.path.join(folder, "*_mmar.py"))):
        try:
            check_imports(path)
            report["import_check"][os.path.basename(path)] = "ok"
        except ImportError as error:
            report["import_check"][os.path.basename(path)] = str(error)
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    image = torch.rand(1, 8, 8)
    inputs = processor(text=["<img>What digit is this?"], images=[image], return_tensors="pt")
    with torch.no_grad():
        answer = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    report["answer_tokens"] = answer.shape[1] - inputs["input_ids"].shape[1]
    prompt = processor(text=["a handwritten seven"], generation_mode="image", return_tensors="pt")
    try:
        model.generate(**prompt, generation_mode="image", num_iter=2, num_inference_steps=2)
        report["image_error"] = None
    except ImportError as error:
        report["image_error"] = str(error)
    print("REPORT", json.dumps(report))
    """
)


def test_understanding_works_without_diffusers_and_image_generation_says_what_to_install(saved_model, tmp_path):
    folder, _, _ = saved_model
    hidden = tmp_path / "no-diffusers" / "diffusers"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError(\"No module named 'diffusers'\")\n")
    script = tmp_path / "script" / "without_diffusers.py"
    script.parent.mkdir()
    script.write_text(WITHOUT_DIFFUSERS_SCRIPT)
    env = isolated_python_env(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(hidden.parent), env["PYTHONPATH"]])

    result = subprocess.run([sys.executable, "-S", str(script), str(folder)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.split("REPORT ", 1)[1])
    assert report["diffusers_importable"] is False
    assert set(report["import_check"].values()) == {"ok"}, report["import_check"]
    assert report["answer_tokens"] == 3
    assert "pip install diffusers" in report["image_error"]


DIFFUSERS_PIPELINE_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys
    import torch
    from diffusers import DiffusionPipeline
    from safetensors.torch import save_file

    folder, outputs_file = sys.argv[1:3]
    report = {name: importlib.util.find_spec(name) is not None for name in ("modeling_mmar", "processors")}
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    report["classes"] = {name: f"{type(obj).__module__}.{type(obj).__name__}"
                         for name, obj in (("pipeline", pipe), *pipe.components.items())}
    image = pipe("a handwritten seven", num_iter=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                 output_type="pt").images
    save_file({"image": image.contiguous()}, outputs_file)
    print("REPORT", json.dumps(report))
    """
)


def test_an_exported_folder_is_a_diffusers_custom_pipeline_without_the_package(saved_model, tmp_path):
    """`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` where only diffusers + transformers are
    installed: the pipeline and its components come from the folder's own code, and draw the installed images."""
    from modeling_mmar import MMARPipeline, MMARScheduler
    from training.export import write_export

    _, model, processor = saved_model
    folder = tmp_path / "export"
    write_export(model, processor, MMARScheduler.from_model_config(model.config), folder)
    script = tmp_path / "script" / "diffusers_pipeline.py"
    script.parent.mkdir()
    script.write_text(DIFFUSERS_PIPELINE_SCRIPT)
    result = subprocess.run([sys.executable, "-S", str(script), str(folder), str(tmp_path / "out.safetensors")],
                            cwd=tmp_path, env=isolated_python_env(tmp_path), capture_output=True, text=True,
                            timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.split("REPORT ", 1)[1])
    assert report["modeling_mmar"] is False and report["processors"] is False
    classes = report["classes"]
    assert classes["pipeline"].endswith("pipeline_mmar.MMARPipeline")
    assert classes["model"].endswith("modeling_mmar.MMARForConditionalGeneration")
    assert classes["processor"].endswith("processing_mmar.MMARProcessor")
    assert classes["scheduler"].endswith("scheduling_mmar.MMARScheduler")
    assert not any(name.startswith(("modeling_mmar.", "processors.")) for name in classes.values()), classes

    # With the package installed, MMARPipeline loads the same folder with the installed code, no remote code.
    installed = MMARPipeline.from_pretrained(folder)
    assert type(installed.model) is MMARForConditionalGeneration and type(installed.processor) is MMARProcessor
    installed.set_progress_bar_config(disable=True)
    expected = installed("a handwritten seven", num_iter=2, num_inference_steps=3,
                         generator=torch.Generator().manual_seed(0), output_type="pt").images
    torch.testing.assert_close(load_file(tmp_path / "out.safetensors")["image"], expected, rtol=0, atol=1e-6)
    assert expected.std() > 0
