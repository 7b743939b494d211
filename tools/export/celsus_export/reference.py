"""Access to the ORIGINAL model code (a checkout of FscoreLab/Celsus_PLI the user points to).

Nothing of the original repository is copied into this project: its directories are put on
`sys.path` at run time and its modules are imported as the reference API imports them
(`api/inference_service.py`):

    CT_CLIP.ct_clip.ct_clip.CTCLIP, transformer_maskgit.transformer_maskgit.ctvit.CTViT,
    ct_clip_classifier.SimpleCTCLIPClassifier          (repository root on sys.path)
    diffusion_anomaly.script_util.create_classifier    (+ repo/diffusion_anomaly on sys.path)
    mednext.inference.init_model                       (repository root)
    lavis (fVLM BLIP model, config and registry)       (repo/fvlm on sys.path, as `pip install -e fvlm`)

Two run-time shims make the reference code run on a machine without a GPU, without changing what
it computes:
  * `redirect_cuda`: CTViT hard-codes `torch.device("cuda")` inside its forward passes
    (celsus-reference §3.1, §5.4). The module-level name `torch` of the two affected modules is
    replaced by a proxy whose `device("cuda")` returns the export device (CPU); every other
    attribute is the real torch.
  * `stub_modules`: modules that the reference imports at module level but that the exported
    computation never uses (e.g. nothing here) can be stubbed; see `fvlm.py` for TotalSegmentator,
    which is not imported at all because the exporter builds the fVLM model through lavis directly.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import types
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[3]

# what a checkout must contain, per model
LAYOUT = {
    "ctclip": ["CT_CLIP/ct_clip/ct_clip.py", "transformer_maskgit/transformer_maskgit/ctvit.py",
               "transformer_maskgit/transformer_maskgit/attention.py", "scripts/universal_ct_inference.py"],
    "supervised": ["CT_CLIP/ct_clip/ct_clip.py", "transformer_maskgit/transformer_maskgit/ctvit.py",
                   "ct_clip_classifier.py", "api/inference_service.py"],
    "diffusion": ["diffusion_anomaly/script_util.py", "diffusion_anomaly/unet.py", "diffusion_anomaly/dist_util.py"],
    "mednext": ["mednext/inference.py", "mednext/mednext_classifier3d.py", "mednext/mednext_blocks.py"],
    "fvlm": ["fvlm/lavis/models/blip_models/blip_pretrain.py", "fvlm/lavis/common/config.py",
             "fvlm/lavis/projects/blip/train/pretrain_ct.yaml", "fvlm/inference_nifti_separate_masks.py"],
}


class ExportError(Exception):
    """A stated reason why a model cannot be exported (reported without a traceback, exit code 2)."""


class ReferenceError_(ExportError):
    """The checkout is missing, incomplete, or inside this project."""


class ReferenceRepo:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser().resolve()
        if not self.path.is_dir():
            raise ReferenceError_(f"--repo {self.path}: not a directory (clone FscoreLab/Celsus_PLI there)")
        try:
            self.path.relative_to(PROJECT_ROOT)
            inside = True
        except ValueError:
            inside = False
        if inside:
            raise ReferenceError_(f"--repo {self.path} is inside this project ({PROJECT_ROOT}); check the original "
                                  "repository out beside the project, never inside it")

    def require(self, model: str) -> None:
        missing = [p for p in LAYOUT[model] if not (self.path / p).is_file()]
        if missing:
            raise ReferenceError_(f"--repo {self.path} lacks {', '.join(missing)} (needed for {model}); "
                                  "is it a checkout of FscoreLab/Celsus_PLI?")

    def commit(self) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(self.path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() or None if out.returncode == 0 else None

    def activate(self, *subdirs: str) -> None:
        """Puts the checkout (and e.g. `diffusion_anomaly`, `fvlm`) at the front of sys.path."""
        for p in [*(self.path / s for s in subdirs), self.path][::-1]:
            s = str(p)
            if s in sys.path:
                sys.path.remove(s)
            sys.path.insert(0, s)

    # -- data read from the checkout's source without importing it ------------------------------
    def literal(self, relpath: str, name: str):
        """The value of a module-level `NAME = <literal>` assignment in a source file."""
        tree = ast.parse((self.path / relpath).read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                return ast.literal_eval(node.value)
        raise ReferenceError_(f"{relpath}: no module-level assignment to {name}")

    def attribute_literal(self, relpath: str, cls: str, attr: str):
        """The value of `self.ATTR = <literal>` inside class CLS of a source file."""
        tree = ast.parse((self.path / relpath).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name == cls:
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Assign):
                        for t in sub.targets:
                            if isinstance(t, ast.Attribute) and t.attr == attr and isinstance(t.value, ast.Name) and t.value.id == "self":
                                return ast.literal_eval(sub.value)
        raise ReferenceError_(f"{relpath}: no `self.{attr} = ...` in class {cls}")


class _TorchProxy(types.ModuleType):
    """`torch`, except that `device("cuda...")` is the export device."""

    def __init__(self, torch_module, device):
        super().__init__("torch")
        self._torch = torch_module
        self._device = torch_module.device(device)

        def device_(*args, **kwargs):
            d = torch_module.device(*args, **kwargs)
            return self._device if d.type == "cuda" else d

        self.device = device_

    def __getattr__(self, name):
        return getattr(self._torch, name)


def redirect_cuda(modules, device: str = "cpu") -> None:
    """Replaces the name `torch` in each module by a proxy mapping `torch.device("cuda")` to `device`."""
    import torch

    proxy = _TorchProxy(torch, device)
    for m in modules:
        if getattr(m, "torch", None) is torch or isinstance(getattr(m, "torch", None), _TorchProxy):
            m.torch = proxy


def unwrap_beartype(module) -> int:
    """Removes `@beartype` runtime type checks from the methods of a module's classes.

    The ONNX tracer passes shapes as 0-d tensors where the reference annotates `Tuple[int, ...]`
    (CTViT's `PEG.forward` / `Transformer.forward`); the checks only validate argument types, so
    the unwrapped methods compute exactly the same. Returns the number of methods unwrapped."""
    n = 0
    for obj in list(vars(module).values()):
        if not isinstance(obj, type) or obj.__module__ != module.__name__:
            continue
        for name, fn in list(vars(obj).items()):
            inner = getattr(fn, "__wrapped__", None)
            code = getattr(fn, "__code__", None)
            if inner is not None and code is not None and code.co_filename.startswith("<@beartype"):
                setattr(obj, name, inner)
                n += 1
    return n


def stub_modules(names) -> None:
    """Empty placeholder modules for imports the exported computation never uses."""
    for name in names:
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
