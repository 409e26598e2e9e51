"""A compressed context: a document compressed once (query-agnostic), answered many times, saved and loaded.

:meth:`Session.compress_context` prefills a context alone and compresses it with the session's method.
:meth:`CompressedContext.fork` gives a fresh cache holding the same entries for one continuation (a question and its
answer); forks share the stored K/V, so nothing is copied until a fork appends (then only the appended-to dense parts
of that fork). Every fork starts from the same state, so each question is answered exactly as if it were the only one.

:meth:`CompressedContext.save` writes one safetensors file: the K/V each layer holds, the compressor's state, and a
JSON header (format, model and tokenizer fingerprints, method, token count, layer budgets). :meth:`Session.load_context`
reads it back for the same model, tokenizer and method, and refuses anything else with the difference named.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lavakv.cache.compressed import CompressedCache, CompressedLayer
from lavakv.cache.storage import DenseKV, RaggedKV

# The session is typed Any here: this module is imported by runtime/session.py and never imports it back.
FORMAT = "lavakv-context/2"  # 2: the weight hash samples every parameter


#: elements of each parameter the weight hash reads, evenly spaced over the flattened tensor
_SAMPLED = 4096


def model_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """What identifies a model for a saved context: class, name, shapes and a hash of every parameter's name and
    shape and of up to 4,096 evenly spaced elements of it (a fine-tune or a merged adapter changes whole matrices,
    so the sample sees it; reading every weight would cost seconds on a large model). Parameters offloaded to the
    meta device are hashed by name and shape only."""
    config = model.config.get_text_config(decoder=True)
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        digest.update(f"{name}{tuple(parameter.shape)}".encode())
        if parameter.device.type == "meta":  # offloaded by accelerate: its values are not here to read
            continue
        flat = parameter.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // _SAMPLED)][:_SAMPLED]
        digest.update(sample.float().cpu().numpy().tobytes())
    return {
        "class": type(model).__name__,
        "name_or_path": str(getattr(model.config, "_name_or_path", "")),
        "layers": int(config.num_hidden_layers),
        "kv_heads": int(getattr(config, "num_key_value_heads", config.num_attention_heads)),
        "hidden_size": int(config.hidden_size),
        "vocab_size": int(config.vocab_size),
        "weights_sha256": digest.hexdigest()[:32],
    }


def tokenizer_fingerprint(tokenizer) -> dict[str, Any] | None:
    """What identifies a tokenizer: class, name, size and a hash of its vocabulary (None without a tokenizer)."""
    if tokenizer is None:
        return None
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return {
        "class": type(tokenizer).__name__,
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "size": len(tokenizer),
        "vocab_sha256": hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:32],
    }


def _difference(kind: str, saved: dict | None, given: dict | None) -> str | None:
    if saved == given:
        return None
    if saved is None or given is None:
        return f"the context was saved {'without' if saved is None else 'with'} a {kind} fingerprint"
    keys = sorted(k for k in set(saved) | set(given) if saved.get(k) != given.get(k))
    return f"{kind} differs in " + ", ".join(f"{k} (saved {saved.get(k)!r}, given {given.get(k)!r})" for k in keys)


@dataclass
class CompressedContext:
    """A context prefilled alone and compressed once; fork it for each continuation.

    Attributes:
        session: the session it belongs to (forks work inside its ``with`` block).
        cache: the compressed context itself (never decoded into; forks are).
        tokens: context tokens (padding excluded).
        method: the method's description (:meth:`lavakv.Method.describe`).
        model: the model's fingerprint; tokenizer: the tokenizer's, or None.
    """

    session: Any  # the lavakv.Session that made it
    cache: CompressedCache
    tokens: int
    method: dict[str, Any]
    model: dict[str, Any]
    tokenizer: dict[str, Any] | None = None

    def fork(self) -> CompressedCache:
        """A fresh cache holding the compressed context, for one continuation (``session.extend`` a question,
        then decode). Shares the stored K/V with the context and every other fork."""
        return self.session.fork(self.cache)

    def save(self, path: str | Path) -> Path:
        """Write the context to ``path`` (safetensors with a JSON header); returns the path."""
        from safetensors.torch import save_file

        compressor = self.session.compressor(self.cache)
        tensors: dict[str, torch.Tensor] = {
            "valid": compressor.valid, "real_tokens": compressor.real_tokens,
            **{name: value for name, value in (("budget", compressor.budget), ("active", compressor.active))
               if value is not None},  # None for `full`, which has no budget
        }
        layers = []
        for index, layer in enumerate(self.cache.layers):
            if not isinstance(layer, CompressedLayer) or not layer.compressible:
                raise ValueError(
                    f"layer {index} of this context is not a compressed layer (a sliding-window layer past its window, "
                    "or another layer kind); such contexts cannot be saved yet"
                )
            entry: dict[str, Any] = {"prompt_columns": layer.prompt_columns, "compressed": layer.compressed,
                                     "logical_length": layer.logical_length,
                                     "dense_prompt_entries": layer.dense_prompt_entries}
            if layer.prefix is not None:
                entry["storage"] = "ragged"
                tensors[f"layer{index}.keys"], tensors[f"layer{index}.values"] = layer.prefix.keys, layer.prefix.values
                tensors[f"layer{index}.lengths"] = layer.prefix.lengths
                if layer.tail is not None:
                    tensors[f"layer{index}.tail_keys"] = layer.tail.keys
                    tensors[f"layer{index}.tail_values"] = layer.tail.values
            else:
                entry["storage"] = "dense"
                tensors[f"layer{index}.keys"], tensors[f"layer{index}.values"] = layer.dense.keys, layer.dense.values
            if layer.kept_prompt is not None:
                tensors[f"layer{index}.kept"] = layer.kept_prompt
            if layer.tracks_queries:
                tensors[f"layer{index}.recent_queries"] = layer.recent_queries()
            for name, table in (("budget", compressor.budgets), ("statistic", compressor.statistics)):
                if index in table:
                    tensors[f"layer{index}.{name}"] = table[index]
            if index in compressor.scaling:
                entry["scaling"] = compressor.scaling[index]
            layers.append(entry)
        header = {
            "format": FORMAT, "model": self.model, "tokenizer": self.tokenizer, "method": self.method,
            "tokens": self.tokens, "layers": layers, "compressed_layers": list(compressor.layers),
            "layer_budgets": {str(i): compressor.budgets[i].tolist() for i in compressor.budgets},
        }
        path = Path(path)
        # contiguous: a layer that evicted nothing still holds the model's own (transposed) K/V view
        save_file({k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in tensors.items()},
                  str(path), metadata={"lavakv": json.dumps(header)})
        return path


def load_context(session: Any, path: str | Path, tokenizer=None) -> CompressedContext:
    """Read a context saved by :meth:`CompressedContext.save` into ``session`` (same model, tokenizer, method)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved context at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open has no iter)
    except Exception as error:  # a file that is not safetensors
        raise ValueError(f"{path} is not a saved lavakv context ({error})") from None
    if "lavakv" not in metadata:
        raise ValueError(f"{path} is a safetensors file but not a saved lavakv context (no lavakv header)")
    header = json.loads(metadata["lavakv"])
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} has context format {header.get('format')!r}; this lavakv reads {FORMAT!r}")
    stored = {t.dtype for k, t in tensors.items() if k.endswith("keys") or k.endswith("values")}
    if stored and stored != {session.model.dtype}:
        raise ValueError(f"{path} holds {', '.join(sorted(map(str, stored)))} K/V and the model runs in "
                         f"{session.model.dtype}: load the model in the dtype the context was saved from, or compress "
                         "the context again")
    method = json.loads(json.dumps(session.method.describe())) if hasattr(session.method, "describe") else None
    problems = [p for p in (
        _difference("model", header["model"], model_fingerprint(session.model)),
        _difference("method", header["method"], method),
        _difference("tokenizer", header["tokenizer"], tokenizer_fingerprint(tokenizer)) if tokenizer is not None
        else None,
    ) if p]
    if problems:
        raise ValueError(f"{path} was saved for another setup: " + "; ".join(problems)
                         + ". Load it with the model, tokenizer and method that compressed it")
    device = next(session.model.parameters()).device
    cache = session.cache()
    compressor = session.compressor(cache)
    compressor.valid = tensors["valid"].to(device)
    compressor.real_tokens = tensors["real_tokens"].to(device)
    compressor.budget, compressor.active = (tensors[name].to(device) if name in tensors else None
                                            for name in ("budget", "active"))
    compressor.layers = list(header["compressed_layers"])
    compressor.prefilling = False
    for index, entry in enumerate(header["layers"]):
        t = {k.split(".", 1)[1]: v.to(device) for k, v in tensors.items() if k.startswith(f"layer{index}.")}
        if entry["storage"] == "ragged":
            prefix = RaggedKV(t["keys"], t["values"], t["lengths"].cpu())
            tail = DenseKV(t["tail_keys"], t["tail_values"]) if "tail_keys" in t else None
            storage: DenseKV | RaggedKV | tuple = (prefix, tail)
        else:
            storage = DenseKV(t["keys"], t["values"])
        cache.layers[index].restore(storage, kept=t.get("kept"), prompt_columns=entry["prompt_columns"],
                                    compressed=entry["compressed"], logical_length=entry["logical_length"],
                                    dense_prompt_entries=entry["dense_prompt_entries"],
                                    recent_queries=t.get("recent_queries"), window=compressor.window)
        if "budget" in t:
            compressor.budgets[index] = t["budget"]
        if "statistic" in t:
            compressor.statistics[index] = t["statistic"]
        if "scaling" in entry:
            compressor.scaling[index] = float(entry["scaling"])
    return CompressedContext(session, cache, int(header["tokens"]), header["method"], header["model"],
                             header["tokenizer"])
