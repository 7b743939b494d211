"""MedNeXt 3-D classifier (celsus-reference §3.5), built and loaded by the reference's own
`mednext.inference.init_model` (config: classes, roi_size, depth_config, expansion_ratio, dtype,
activation, ...; weights: `model_state` or the raw dict, `module.` prefix stripped, strict load).
The reference hard-codes the artefact paths (`mednext/artifacts/pli_2.json`,
`pli_2_model_last_e_15.ckpt`); the exporter points the module's DEFAULT_CONFIG_PATH /
DEFAULT_WEIGHTS_PATH at the files given on the command line before calling it.

Graph: image [1,1,i,j,k] (roi_size; float16 when the config's dtype is float16, the reference's
default, else float32) -> cast to float32 -> MedNeXt3DClassifier -> logits f32 [1, n_classes];
the service applies the config's activation (sigmoid or softmax) and emits the config's classes.
The reference runs fp16 autocast on CUDA; the graph computes in float32 (more exact, not bit-equal).
"""

from __future__ import annotations

from pathlib import Path

from . import contracts
from .common import Exported, count_params, diff_stats, sigmoid, softmax
from .reference import ExportError, ReferenceRepo


def init(repo: ReferenceRepo, checkpoint: Path, config: Path):
    repo.require("mednext")
    repo.activate()
    import mednext.inference as inference

    inference.DEFAULT_CONFIG_PATH = Path(config)
    inference.DEFAULT_WEIGHTS_PATH = Path(checkpoint)
    return inference, inference.init_model(device="cpu")


def mednext_input(volume, roi, dtype):
    """An approximation of the MedNeXt recipe from the CT-CLIP tensor (0.75 x 0.75 x 1.5 mm grid):
    [i, j, k] HU resampled (trilinear) to 1 x 1 x 1.5 mm, clipped, zero-padded / centre-cropped to
    roi, nonzero-normalised, cast."""
    import torch
    import torch.nn.functional as F

    hu = torch.from_numpy(volume[0]).permute(1, 2, 0)[None, None] * 1000.0  # [1,1,i,j,k]
    size = [int(round(hu.shape[2] * 0.75)), int(round(hu.shape[3] * 0.75)), hu.shape[4]]
    x = F.interpolate(hu, size=size, mode="trilinear", align_corners=False).clamp(-1000.0, 1000.0)[0, 0]
    for ax, r in enumerate(roi):
        n = x.shape[ax]
        if n < r:
            before = (r - n) // 2
            pad = [0, 0] * 3
            pad[2 * (2 - ax)] = before
            pad[2 * (2 - ax) + 1] = r - n - before
            x = F.pad(x, pad)
        elif n > r:
            s = n // 2 - r // 2
            x = x.narrow(ax, s, r)
    nz = x != 0
    mu, sd = x[nz].mean(), x[nz].std(unbiased=False)
    x = torch.where(nz, (x - mu) / (sd if sd > 0 else 1.0), x)
    return x[None, None].to(dtype).contiguous()


def export(repo: ReferenceRepo, checkpoint: Path, config: Path, volume, ignore_body_crop=False) -> Exported:
    import torch

    inference, art = init(repo, checkpoint, config)
    notes = [f"config: {len(art.classes)} classes, roi {list(art.roi_size)}, input dtype {str(art.input_dtype).replace('torch.', '')}, "
             f"activation {art.probability_activation}"]
    if art.crop_by_body_part:
        msg = ("the config enables crop_by_body_part (KMeans body crop), which mednext-svc does not implement: "
               "its inputs will differ from the reference's")
        if not ignore_body_crop:
            raise ExportError(msg + " (--ignore-body-crop exports anyway)")
        notes.append("WARNING: " + msg)
    if int(art.config.get("in_channels", 1)) != 1:
        raise ExportError("in_channels != 1: the service feeds one CT channel")
    if art.input_dtype == torch.float16:
        dtype_name = "float16"
    else:
        dtype_name = "float32"
        if art.input_dtype != torch.float32:
            notes.append(f"the config's input dtype {art.input_dtype} is not a bundle dtype: the graph takes float32")
    model = art.model.eval()
    activation = art.probability_activation

    class MednextGraph(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.net = m

        def forward(self, image):
            return self.net(image.float())

    graph = MednextGraph(model).eval()
    x = mednext_input(volume, art.roi_size, torch.float16 if dtype_name == "float16" else torch.float32)
    act = sigmoid if activation == "sigmoid" else softmax

    def verify(sess, tol):
        with torch.no_grad():
            # the reference on CUDA: fp16 input under fp16 autocast; on CPU its call would fail
            # (half input, float weights), so the same (fp16-rounded) values go in as float32
            ref = model(x.float()).numpy()
        out = sess.run(None, {"image": x.numpy()})[0]
        return {"max_abs_diff": diff_stats(act(ref), act(out)), "max_abs_diff_logits": diff_stats(ref, out),
                "compared": f"{activation} of the {len(art.classes)} logits: MedNeXt3DClassifier (float32) vs the graph"}

    ins, outs = contracts.io_spec("mednext", n_labels=len(art.classes), input_dtype=dtype_name, roi=art.roi_size)
    recipe = dict(contracts.RECIPES["mednext"])
    recipe["roi"] = [int(v) for v in art.roi_size]
    return Exported(
        model="mednext", module=graph, example_inputs=(x,), input_specs=ins, output_specs=outs,
        labels=contracts.labels_section("mednext", art.classes, activation), recipe=recipe,
        sources={"checkpoint": checkpoint, "config": config},
        description=f"MedNeXt 3-D classifier: {len(art.classes)} classes from {Path(config).name} ({activation}); "
                    f"{dtype_name} input, float32 compute.",
        notes=notes, verify=verify, params=count_params(model))
