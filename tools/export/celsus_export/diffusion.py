"""Diffusion anomaly classifier (celsus-reference §3.4.1), built and loaded exactly as
`api/inference_service.py` DiffusionClassifierInference.load_model does:

    sys.path += [<repo>/diffusion_anomaly]
    create_classifier(image_size=256, classifier_use_fp16=False, classifier_width=32, classifier_depth=2,
                      classifier_attention_resolutions="32,16,8", classifier_use_scale_shift_norm=True,
                      classifier_resblock_updown=True, classifier_pool="attention", dataset="ct-rate")
    model.load_state_dict(dist_util.load_state_dict(path))          # strict

Graph: image f32 [B,1,256,256], timesteps int64 [B] (the service sends 0) -> logits f32 [B,2]
(softmax class 1 = pathological; the service takes mean/max/std over the 216 slices).
"""

from __future__ import annotations

from pathlib import Path

from . import contracts
from .common import Exported, count_params, diff_stats, softmax_pair
from .reference import ReferenceRepo

CLASSIFIER_KWARGS = dict(image_size=256, classifier_use_fp16=False, classifier_width=32, classifier_depth=2,
                         classifier_attention_resolutions="32,16,8", classifier_use_scale_shift_norm=True,
                         classifier_resblock_updown=True, classifier_pool="attention", dataset="ct-rate")


def build(repo: ReferenceRepo):
    repo.require("diffusion")
    repo.activate("diffusion_anomaly")
    from diffusion_anomaly.script_util import create_classifier

    return create_classifier(**CLASSIFIER_KWARGS)


def slices(volume, indices, size=256):
    """The reference's `_prepare_slices_from_nifti` for the given depth indices: each [480,480]
    slice, square centre crop (a no-op here), bilinear (align_corners=False) to size x size."""
    import torch
    import torch.nn.functional as F

    vol = torch.from_numpy(volume[0])
    out = []
    for idx in indices:
        s = vol[idx].unsqueeze(0)
        h, w = s.shape[1], s.shape[2]
        m = min(h, w)
        top, left = (h - m) // 2, (w - m) // 2
        s = s[:, top:top + m, left:left + m]
        if m != size:
            s = F.interpolate(s.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False)[0]
        out.append(s)
    return torch.stack(out)


def export(repo: ReferenceRepo, checkpoint: Path, volume) -> Exported:
    import numpy as np
    import torch

    model = build(repo)
    from diffusion_anomaly.dist_util import load_state_dict

    model.load_state_dict(load_state_dict(str(checkpoint), map_location="cpu"))  # strict, as the reference
    model.eval()

    class DiffusionGraph(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.classifier = m

        def forward(self, image, timesteps):
            return self.classifier(image, timesteps)

    graph = DiffusionGraph(model).eval()
    r = contracts.RECIPES["diffusion"]
    idx = np.linspace(r["slice_start"], r["slice_end"] - 1, 16).round().astype(int)
    batch = slices(volume, idx)
    t0 = torch.zeros(batch.shape[0], dtype=torch.long)
    batch_dim = torch.export.Dim("batch", min=1, max=1024)

    def verify(sess, tol):
        worst, worst_logits, runs = 0.0, 0.0, []
        cases = [(batch, t0, "16 slices, t=0"), (batch[5:8], torch.zeros(3, dtype=torch.long), "3 slices, t=0"),
                 (batch[:4], torch.tensor([0, 10, 250, 999]), "4 slices, t in {0,10,250,999}")]
        for x, t, what in cases:
            with torch.no_grad():
                ref = model(x, t).numpy()
            out = sess.run(None, {"image": x.numpy(), "timesteps": t.numpy()})[0]
            worst = max(worst, diff_stats(softmax_pair(ref, 1), softmax_pair(out, 1)))
            worst_logits = max(worst_logits, diff_stats(ref, out))
            runs.append(what)
        return {"max_abs_diff": worst, "max_abs_diff_logits": worst_logits,
                "compared": "softmax(logits)[:,1] per slice, EncoderUNetModel vs the graph: " + "; ".join(runs)}

    ins, outs = contracts.io_spec("diffusion", n_labels=2)
    return Exported(
        model="diffusion", module=graph, example_inputs=(batch, t0), input_specs=ins, output_specs=outs,
        labels=contracts.labels_section("diffusion", contracts.DIFFUSION_LABELS), recipe=dict(r),
        sources={"checkpoint": checkpoint},
        description="Diffusion anomaly classifier (EncoderUNetModel, attention pooling): per-slice [B,2] logits with the "
                    "timestep input; the service runs slices 12..227 at t=0 and aggregates mean/max/std of softmax class 1.",
        dynamic_shapes={"image": {0: batch_dim}, "timesteps": {0: batch_dim}}, verify=verify, params=count_params(model))
