"""The model formats a Runtime serves, and the compiler that turns what users hold into them.

- **TorchScript** (``torch.jit.save`` files, their bytes, a ``torch.jit.ScriptModule``): loaded
  as is. Deprecated upstream, still served.
- **AOTInductor packages** (``.pt2`` files from ``torch._inductor.aoti_compile_and_package``, or
  their bytes): ahead-of-time compiled kernels, loaded by the C++ core with
  ``torch::inductor::AOTIModelPackageLoader`` and run on each lane's thread and stream.
- **torch.export** (an ``ExportedProgram``, or a ``torch.export.save`` archive) and plain
  **nn.Module** (with ``example_inputs``): exported with a dynamic batch dimension
  (``Dim("batch", min=1, max=max_batch_size)``, traced on a batch of 2 because export
  specializes sizes 0 and 1), then compiled to an AOTInductor package for the runtime's device.
  Compiled packages are cached (key: the exported program, input signature, max batch, device,
  CPU level and torch version), so the second start skips the compiler.

The cache lives in ``$GPULANES_CACHE_DIR/packages`` (default ``~/.cache/gpulanes/packages``).
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch

from . import _C
from .errors import InvalidInput, ModelError

__all__ = ["compile_package", "package_cache_dir", "package_metadata"]

_TORCHSCRIPT, _AOTI = "torchscript", "aoti"


@dataclass(frozen=True)
class ModelFile:
    """What the core loads: ``kind`` "path" or "bytes" (TorchScript) or "aoti" (a package
    path); ``digest`` keys the profile cache (None when the file cannot be read)."""

    kind: str
    source: Union[str, bytes]
    digest: Optional[str]
    format: str


def package_cache_dir() -> Path:
    """Where compiled packages are kept between runs."""
    env = os.environ.get("GPULANES_CACHE_DIR")
    base = Path(env) if env else Path.home() / ".cache" / "gpulanes"
    return base / "packages"


def package_metadata(path: Union[str, "os.PathLike[str]"]) -> dict:
    """An AOTInductor package's metadata: ``AOTI_DEVICE_KEY`` (cpu/cuda), platform, CPU ISA,
    and for packages gpulanes compiled the torch version that made them. Raises ModelError for
    a missing, corrupt or truncated package."""
    return dict(_C.aoti_package_metadata(os.fspath(path)))


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _zip_names(head: bytes, data: Optional[bytes], path: Optional[str]) -> Sequence[str]:
    """The member names of a zip archive, or () when it is not one (or is unreadable)."""
    if head[:2] != b"PK":
        return ()
    try:
        with zipfile.ZipFile(io.BytesIO(data) if data is not None else path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return ()


def _kind_of(names: Sequence[str]) -> str:
    """'aoti', 'export' (a torch.export.save archive) or 'torchscript' (everything else; its
    loader reports what is wrong with it)."""
    if any("/data/aotinductor/" in n for n in names):
        return _AOTI
    if any(n.endswith("/models/model.json") for n in names):
        return "export"
    return _TORCHSCRIPT


def resolve(model: Any, *, name: str, example_inputs: Tuple[torch.Tensor, ...],
            max_batch_size: int, device: str, progress: Optional[bool],
            run_script_module: bool = True) -> ModelFile:
    """The file the core loads for ``model`` on ``device`` ("cpu" or "cuda"), compiling it
    first when it is an nn.Module or an ExportedProgram. Raises TypeError for what is no model,
    ModelError for a model that cannot be read, exported or compiled, InvalidInput for example
    inputs it cannot take (a ScriptModule is run once to see, unless ``run_script_module`` is
    false: process lanes keep models that may crash out of this process)."""
    strings = [i for i, t in enumerate(example_inputs) if not isinstance(t, torch.Tensor)]
    if not isinstance(model, (torch.jit.ScriptModule, bytes, bytearray, memoryview, str,
                              os.PathLike)):
        _no_strings(strings, name, "give torch.jit.script(model)")
    if isinstance(model, torch.jit.ScriptModule):
        if run_script_module:
            _check_script_module(model, example_inputs, max_batch_size, name)
        buf = io.BytesIO()
        torch.jit.save(model, buf)
        data = buf.getvalue()
        return ModelFile("bytes", data, _sha256(data), _TORCHSCRIPT)
    if isinstance(model, torch.export.ExportedProgram) or isinstance(model, torch.nn.Module):
        path = compile_package(model, example_inputs, max_batch_size=max_batch_size,
                               device=device, name=name, progress=progress)
        return ModelFile(_AOTI, str(path), _sha256(path.name.encode()), _AOTI)
    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
        kind = _kind_of(_zip_names(data[:2], data, None))
        if kind == _TORCHSCRIPT:
            return ModelFile("bytes", data, _sha256(data), _TORCHSCRIPT)
        _no_strings(strings, name, "this is not a TorchScript file")
        if kind == "export":
            return _from_export_archive(io.BytesIO(data), name, example_inputs, max_batch_size,
                                        device, progress)
        # The loader reads packages from a file: keep one per content in the cache.
        digest = _sha256(data)
        path = package_cache_dir() / f"bytes-{digest[7:23]}.pt2"
        if not path.exists():
            _write_atomically(path, data)
        return ModelFile(_AOTI, str(path), digest, _AOTI)
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:  # the core reports the missing file as a ModelError
            if path.endswith(".pt2"):
                return ModelFile(_AOTI, path, None, _AOTI)
            return ModelFile("path", path, None, _TORCHSCRIPT)
        names = _zip_names(data[:2], data, None)
        # An unreadable .pt2 goes to the package loader, whose error says what is wrong.
        kind = _AOTI if not names and path.endswith(".pt2") else _kind_of(names)
        if kind != _TORCHSCRIPT:
            _no_strings(strings, name, "this is not a TorchScript file")
        if kind == "export":
            return _from_export_archive(path, name, example_inputs, max_batch_size, device,
                                        progress)
        return ModelFile(_AOTI if kind == _AOTI else "path", path, _sha256(data),
                         kind if kind == _AOTI else _TORCHSCRIPT)
    raise TypeError(f"model must be a path, bytes, torch.jit.ScriptModule, "
                    f"torch.export.ExportedProgram or nn.Module, not {type(model).__name__}")


def _texts(strings: Sequence[Any]) -> List[str]:
    """A string input's example as TorchScript's List[str] takes it from Python (bytes that are
    not UTF-8 get replacement characters: only for this check, the core gets them as they are)."""
    return [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in strings]


def _no_strings(strings: List[int], name: str, instead: str) -> None:
    """InvalidInput when an example is strings (`strings`: their indices) for a model that is not
    TorchScript; `instead` says what to do."""
    if strings:
        raise InvalidInput(f"example_inputs[{strings[0]}] of {name!r} is strings, which only a "
                           f"TorchScript model takes (List[str]): {instead}")


def _check_script_module(model: torch.jit.ScriptModule, examples: Tuple[torch.Tensor, ...],
                         max_batch_size: int, name: str) -> None:
    """check_examples_fit for a TorchScript module, on the device its weights are on."""
    weights = [*model.parameters(), *model.buffers()]
    where = weights[0].device if weights else torch.device("cpu")
    if max_batch_size == 0:  # no batch dimension: the examples are whole inputs
        check_examples_fit(model, tuple(t.to(where) if isinstance(t, torch.Tensor) else _texts(t)
                                        for t in examples), name)
        return
    if any(isinstance(t, torch.Tensor) and (t.dim() == 0 or t.shape[0] == 0) for t in examples):
        return  # no batch to take a sample from: the core's check says what is wrong
    batch = 2 if max_batch_size >= 2 else 1
    sample = tuple(t[:1].expand(batch, *t.shape[1:]).contiguous().to(where)
                   if isinstance(t, torch.Tensor) else _texts(t[:1]) * batch for t in examples)
    check_examples_fit(model, sample, name)


def _from_export_archive(f: Any, name: str, example_inputs, max_batch_size: int, device: str,
                         progress: Optional[bool]) -> ModelFile:
    try:
        ep = torch.export.load(f)
    except Exception as e:  # noqa: BLE001 - any reason the archive is unreadable
        raise ModelError(f"cannot load the torch.export archive of {name!r}: "
                         f"{type(e).__name__}: {e}"[:2000]) from e
    path = compile_package(ep, example_inputs, max_batch_size=max_batch_size, device=device,
                           name=name, progress=progress)
    return ModelFile(_AOTI, str(path), _sha256(path.name.encode()), _AOTI)


def compile_package(model: Union[torch.nn.Module, "torch.export.ExportedProgram"],
                    example_inputs: Union[torch.Tensor, Sequence[torch.Tensor]], *,
                    max_batch_size: int, device: str = "cpu", name: str = "model",
                    progress: Optional[bool] = None, cache: bool = True) -> Path:
    """Exports ``model`` with a dynamic batch dimension (1..``max_batch_size``) and compiles it
    to an AOTInductor package for ``device`` ("cpu" or "cuda"); returns the package's path in
    the cache. ``example_inputs`` are batched like ``register``'s. An ExportedProgram whose
    batch dimension is static is exported again from its module with a dynamic one. Raises
    ModelError carrying export's or the compiler's reason."""
    from tqdm.auto import tqdm

    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    examples = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    bar = tqdm(total=3, desc=f"gpulanes compile {name}", unit="step",
               disable=None if progress is None else not progress)
    try:
        bar.set_postfix_str("export")
        ep = _export_batched(model, examples, max_batch_size, device, name)
        bar.update(1)
        key = _package_key(ep, examples, max_batch_size, device)
        path = package_cache_dir() / f"{name if name.isidentifier() else 'model'}-{key[:24]}.pt2"
        if cache and path.exists():
            bar.set_postfix_str("cached")
            bar.update(2)
            return path
        bar.set_postfix_str("compile (C++ compiler)")
        _compile(ep, path, max_batch_size, name)
        bar.update(2)
        return path
    finally:
        bar.close()


def _export_batched(model: Any, examples: Tuple[torch.Tensor, ...], max_batch_size: int,
                    device: str, name: str) -> "torch.export.ExportedProgram":
    from torch.export import Dim

    if isinstance(model, torch.export.ExportedProgram):
        if _batch_is_dynamic(model) or max_batch_size <= 1:  # 0: it has no batch dimension
            return model
        module = model.module(check_guards=False)  # static batch: export its module again with a dynamic one
        training = False  # its train()/eval() raise; the program is already in its mode
    else:
        module = model
        training = model.training  # exported in eval mode, handed back as it came
    # Export traces on a batch of 2 (it specializes sizes 0 and 1), one example row repeated;
    # a model without a batch dimension (max_batch_size 0) on the examples as they are.
    batch = 2 if max_batch_size >= 2 else 1
    target = torch.device(device)
    sample = tuple(t.to(target) for t in examples) if max_batch_size == 0 else \
        tuple(t[:1].expand(batch, *t.shape[1:]).contiguous().to(target) for t in examples)
    params = [p for p in module.parameters()] + [b for b in module.buffers()]
    if any(p.device.type != target.type for p in params):
        module = copy.deepcopy(module).to(target)  # never move the caller's own weights
    dynamic = (tuple({0: Dim("batch", min=1, max=max_batch_size)} for _ in sample)
               if batch == 2 else None)
    try:
        if training:
            module.eval()
        if not isinstance(model, torch.export.ExportedProgram):  # a program has its own checks
            check_examples_fit(module, sample, name)
        return torch.export.export(module, sample, dynamic_shapes=dynamic)
    except InvalidInput:
        raise
    except Exception as e:  # noqa: BLE001 - export's many error types all mean "cannot export"
        how = "without a batch dimension" if max_batch_size == 0 else \
            f"with a dynamic batch dimension (1 to {max_batch_size})"
        raise ModelError(f"cannot export {name!r} {how}: {type(e).__name__}: {e}"[:4000]) from e
    finally:
        if training:
            module.train()


def check_examples_fit(module: Any, sample: Tuple[torch.Tensor, ...], name: str) -> None:
    """Runs ``module`` once on ``sample`` (a small batch of the example inputs): inputs that do
    not fit the model are an InvalidInput in one line, naming the shapes given and torch's
    reason, instead of export's or the interpreter's trace at start()."""
    try:
        with torch.no_grad():
            module(*sample)
    except Exception as e:  # noqa: BLE001 - any failure here means the examples do not fit
        reason = str(e).strip().splitlines()
        # TorchScript's interpreter puts the reason on the last line, after its own trace.
        line = (reason[-1] if reason else "").strip()
        typed = re.match(r"^(?:builtins\.)?(\w+(?:Error|Exception)): (.*)$", line)
        kind, line = (typed.group(1), typed.group(2)) if typed else (type(e).__name__, line)
        given = ", ".join(f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}"
                          if isinstance(t, torch.Tensor) else f"{len(t)} strings" for t in sample)
        raise InvalidInput(f"example_inputs of {name!r} do not fit the model: forward() on a "
                           f"batch of them ({given}) raised {kind}: {line[:300]}") from None


def _batch_is_dynamic(ep: "torch.export.ExportedProgram") -> bool:
    users = set(ep.graph_signature.user_inputs)
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name in users:
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor) and val.dim() and not isinstance(val.shape[0], torch.SymInt):
                return False
    return True


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _package_key(ep: "torch.export.ExportedProgram", examples: Tuple[torch.Tensor, ...],
                 max_batch_size: int, device: str) -> str:
    """What the compiled code depends on: the program (graph, weights, constants), the
    signature, max batch, device, the CPU's vector level and torch's version."""
    h = hashlib.sha256()
    for part in (str(ep.graph), str(ep.range_constraints), str(max_batch_size), device,
                 torch.__version__, torch.backends.cpu.get_cpu_capability(),
                 repr([(tuple(t.shape[1:]), str(t.dtype)) for t in examples])):
        h.update(part.encode())
        h.update(b"\0")
    for k, v in sorted(ep.state_dict.items()):
        h.update(k.encode())
        h.update(_tensor_bytes(v))
    for k, v in sorted(ep.constants.items()):
        h.update(k.encode())
        h.update(_tensor_bytes(v) if isinstance(v, torch.Tensor) else repr(v).encode())
    return h.hexdigest()


def _compile(ep: "torch.export.ExportedProgram", path: Path, max_batch_size: int, name: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".pt2", dir=path.parent)
    os.close(fd)
    metadata = {_C.PACKAGE_TORCH_VERSION_KEY: torch.__version__,
                "gpulanes_max_batch_size": str(max_batch_size)}
    try:
        torch._inductor.aoti_compile_and_package(
            ep, package_path=tmp, inductor_configs={"aot_inductor.metadata": metadata})
        os.replace(tmp, path)  # whole or not at all: another process may read the cache
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"cannot compile {name!r} with AOTInductor: {type(e).__name__}: "
                         f"{e}"[:4000]) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".pt2", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
