"""fVLM (celsus-reference §3.6): BLIP-style 3-D ViT-B with organ pooling and CXR-BERT prompts.

Built and loaded as `fvlm/inference_nifti_separate_masks.py` NiftiInferenceSeparateMasks._load_model
does, with the checkout's `fvlm` directory on sys.path (as the reference's `pip install -e fvlm`):

    FVLM_BERT_PATH=<bert>                                   (read by BlipBase.init_tokenizer)
    cfg = lavis Config(cfg_path=<pretrain_ct.yaml>, options=["model.med_config_path=<bert>/config.json"])
    model = registry.get_model_class(cfg.model_cfg.arch).from_config(cfg.model_cfg, <mae weights>)
    model.load_state_dict(torch.load(<fvlm_model.pth>)["model"], strict=False)
    text_feat_dict = model.prepare_text_feat(test_items)    (the 18 prompt pairs, max_txt_len 384)

The prompt pairs are read from the checkout's NiftiInferenceSeparateMasks.test_items. The module
itself is not imported (it imports TotalSegmentator at module level, which the export does not need).

Graph: image f32 [1,1,112,288,352] (window [-1150,350] -> [0,1], [k,j,i]), organ_mask f32 (binary,
same shape), organ int64 [1] (0 lung, 1 heart, 2 esophagus, 3 aorta) ->
    ViT -> hidden states after blocks 3, 6, 9 + final norm (4 levels)
    organ tokens = max_pool3d(organ_mask, 16x16x32) > 0
    query_tokens[organ] attends over the organ's tokens of the 4 levels (MultiheadAttention; the
      reference gathers the flagged tokens, the graph masks the others: the same softmax)
    vision_projs[organ] -> L2 norm -> @ [neg, pos] text features / temp -> logits [1,18,2]
The reference runs the whole model in fp16 on CUDA; the graph computes in float32.
The optional heart/aorta segmentation graph (TotalSegmentator in the reference) is NOT exported:
fvlm-svc refuses a bundle with `[fvlm] segmentation`, so the service produces the 13 lung items.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from . import contracts
from .common import Exported, count_params, diff_stats, load_torch, softmax_pair
from .reference import ExportError, ReferenceRepo

TEST_ITEMS_SOURCE = ("fvlm/inference_nifti_separate_masks.py", "NiftiInferenceSeparateMasks", "test_items")
DEFAULT_CONFIG = "fvlm/lavis/projects/blip/train/pretrain_ct.yaml"


def test_items(repo: ReferenceRepo):
    """The checkout's 18 (organ, key, negative prompt, positive prompt), in the bundle's label order."""
    items = [tuple(x) for x in repo.attribute_literal(*TEST_ITEMS_SOURCE)]
    by_key = {(it[0], it[1]): it for it in items}
    want = contracts.FVLM_ITEMS
    missing = [k for k in want if k not in by_key]
    extra = [k for k in by_key if k not in want]
    if missing or extra or len(items) != len(want):
        raise ExportError(f"the checkout's fVLM test items differ from the 18 the bundle contract lists "
                         f"(missing {missing}, extra {extra})")
    return [by_key[k] for k in want]


def construct(repo: ReferenceRepo, mae_weights: Path, bert: Path, config: Path | None):
    """The reference's model construction (before its checkpoint is loaded)."""
    repo.require("fvlm")
    repo.activate("fvlm")
    os.environ["FVLM_BERT_PATH"] = str(bert)  # BlipBase.init_tokenizer reads it
    import lavis  # noqa: F401  (registers the models)
    from lavis.common.config import Config
    from lavis.common.registry import registry

    cfg_path = str(config or (repo.path / DEFAULT_CONFIG))
    args = argparse.Namespace(cfg_path=cfg_path, options=[f"model.med_config_path={os.path.join(str(bert), 'config.json')}"])
    cfg = Config(args)
    model_cls = registry.get_model_class(cfg.model_cfg.arch)
    return model_cls.from_config(cfg.model_cfg, str(mae_weights)), cfg_path


def build(repo: ReferenceRepo, checkpoint: Path, mae_weights: Path, bert: Path, config: Path | None):
    model, cfg_path = construct(repo, mae_weights, bert, config)
    ck = load_torch(checkpoint)  # the reference: torch.load(model_path, map_location="cpu")
    res = model.load_state_dict(ck["model"], strict=False)
    del ck
    model.eval()
    return model, cfg_path, res


def _graph(model, text):
    import torch
    import torch.nn.functional as F

    class FvlmGraph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual_encoder = model.visual_encoder
            self.attention = model.attention
            self.query_tokens = model.query_tokens
            self.register_buffer("proj_w", torch.stack([p.weight.detach() for p in model.vision_projs]).clone())
            self.register_buffer("proj_b", torch.stack([p.bias.detach() for p in model.vision_projs]).clone())
            self.register_buffer("text", text.reshape(-1, text.shape[-1]).detach().clone())  # [18*2, 256]
            self.temp = model.temp

        def forward(self, image, organ_mask, organ):
            _, hidden = self.visual_encoder(image)
            flags = F.max_pool3d(organ_mask, kernel_size=(16, 16, 32), stride=(16, 16, 32)).flatten(1) > 0  # [1, L]
            kv = torch.cat(list(hidden), dim=1)  # [1, 4L, C]
            ignore = ~flags.repeat(1, len(hidden))
            query = self.query_tokens.index_select(0, organ).unsqueeze(0)  # [1, 1, C]
            pooled, _ = self.attention(query, kv, kv, key_padding_mask=ignore, need_weights=False)
            pooled = pooled.squeeze(0)  # [1, C]
            w = self.proj_w.index_select(0, organ)[0]
            b = self.proj_b.index_select(0, organ)[0]
            feat = F.normalize(pooled @ w.t() + b, dim=-1)
            logits = feat @ self.text.t() / self.temp
            return logits.view(1, -1, 2)

    return FvlmGraph().eval()


def organ_windows(volume):
    """(image [k,j,i] in [0,1], [(organ index, binary mask [k,j,i])]) from the CT-CLIP tensor: the
    lung from a classical mask, a heart-like and an aorta-like blob for the other organ passes."""
    import numpy as np

    from .inputs import lung_mask_kji

    hu = np.transpose(volume[0], (0, 2, 1)) * 1000.0  # [D=k, H=i, W=j] -> [k, j, i]
    img = np.clip((hu + 1150.0) / 1500.0, 0.0, 1.0).astype(np.float32)
    lung = lung_mask_kji(hu)
    organs = []
    if lung.any():
        organs.append((0, lung))
        ks, js, is_ = np.nonzero(lung)
        c = np.array([ks.mean(), js.mean(), is_.mean()])
    else:
        c = np.array(hu.shape) / 2.0
    k, j, i = np.ogrid[:hu.shape[0], :hu.shape[1], :hu.shape[2]]
    heart = ((k - c[0]) / 25.0) ** 2 + ((j - c[1]) / 45.0) ** 2 + ((i - c[2]) / 50.0) ** 2 <= 1.0
    aorta = ((j - c[1] - 40) / 12.0) ** 2 + ((i - c[2] + 15) / 12.0) ** 2 <= 1.0
    aorta = aorta & (np.abs(k - c[0]) < 40)
    organs += [(1, heart & ~lung), (3, aorta & ~lung)]
    return img, [(o, m) for o, m in organs if m.any()]


def window(img, mask, size):
    """The reference's per-organ window: organ bbox widened by 10 %, image trilinear and mask
    nearest resized to `size` (k, j, i); returns float32 [1,1,*size] tensors."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    idx = np.nonzero(mask)
    lo = [int(a.min()) for a in idx]
    hi = [int(a.max()) + 1 for a in idx]
    sl = []
    for ax in range(3):
        d = int((hi[ax] - lo[ax]) * 0.1 / 2)
        sl.append(slice(max(0, lo[ax] - d), min(mask.shape[ax], hi[ax] + d)))
    patch = torch.from_numpy(np.ascontiguousarray(img[tuple(sl)]))[None, None]
    m = torch.from_numpy(np.ascontiguousarray(mask[tuple(sl)].astype(np.uint8)))[None, None]
    patch = F.interpolate(patch, size=size, mode="trilinear")
    m = F.interpolate(m, size=size, mode="nearest").float()
    return patch.contiguous(), m.contiguous()


def export(repo: ReferenceRepo, checkpoint: Path, mae_weights: Path, bert: Path, config: Path | None, volume) -> Exported:
    import numpy as np
    import torch

    items = test_items(repo)
    model, cfg_path, res = build(repo, checkpoint, mae_weights, bert, config)
    notes = [f"load_state_dict(strict=False): {len(res.missing_keys)} missing, {len(res.unexpected_keys)} unexpected keys"]
    if list(model.organs) != contracts.FVLM_ORGANS:
        raise ExportError(f"model.organs {model.organs} differ from the service's organ order {contracts.FVLM_ORGANS}")
    with torch.no_grad():
        feats = model.prepare_text_feat(items)  # the reference's own text path: {item: [2, 256] (neg, pos)}
    text = torch.stack([feats[tuple(it)] for it in items]).float()  # [18, 2, 256]
    graph = _graph(model, text)
    notes.append(f"1/temp = {float(1.0 / model.temp):.6g}")
    notes.append("heart/aorta segmentation graph not exported (fvlm-svc refuses [fvlm] segmentation): lung items only")
    size = tuple(contracts.RECIPES["fvlm"]["organ_size"])
    img, organs = organ_windows(volume)
    cases = [(o, *window(img, m, size)) for o, m in organs]
    o0, x0, m0 = cases[0]
    example = (x0, m0, torch.tensor([o0], dtype=torch.long))

    def verify(sess, tol):
        worst, worst_logits, what = 0.0, 0.0, []
        for organ, x, m in cases:
            name = contracts.FVLM_ORGANS[organ]
            mask_id = contracts.FVLM_MASK_IDS[organ]
            organ_items = [it for it in items if it[0] == name]
            acc = dict(zip(organ_items, [[] for _ in organ_items]))
            with torch.no_grad():
                acc = model.forward_test_win(x, m * mask_id, acc, [name], feats, {}, {name: int(m.sum())},
                                             skip_organ=contracts.FVLM_ORGANS.index(name))
            out = sess.run(None, {"image": x.numpy(), "organ_mask": m.numpy(), "organ": np.array([organ], np.int64)})[0][0]
            ref_p, ort_p = [], []
            for n, it in enumerate(items):
                if it[0] != name:
                    continue
                probs = acc[it]
                if not probs:
                    raise RuntimeError(f"the reference produced no value for {it[1]} (organ {name})")
                ref_p.append(float(np.concatenate(probs).mean(0)[1]))
                ort_p.append(float(softmax_pair(out[n], 1)))
            worst = max(worst, diff_stats(np.array(ref_p), np.array(ort_p)))
            what.append(f"{name} ({int(m.sum())} mask voxels, {len(ref_p)} items)")
        return {"max_abs_diff": worst, "max_abs_diff_logits": None,
                "compared": "P(positive) per item, BlipPretrain.forward_test_win vs the graph: " + "; ".join(what)}

    ins, outs = contracts.io_spec("fvlm", n_labels=len(items))
    names = [it[1] for it in items]
    extra = {"fvlm": {"organs": list(contracts.FVLM_ORGANS), "mask_ids": list(contracts.FVLM_MASK_IDS),
                      "item_organs": [it[0] for it in items]}}
    return Exported(
        model="fvlm", module=graph, example_inputs=example, input_specs=ins, output_specs=outs,
        labels=contracts.labels_section("fvlm", names), recipe=dict(contracts.RECIPES["fvlm"]), extra=extra,
        sources={"checkpoint": checkpoint, "mae_weights": mae_weights, "bert": bert, "config": Path(cfg_path)},
        description="fVLM: 3-D ViT-B + organ query pooling + per-organ projections; the 18 prompt pairs' CXR-BERT "
                    "features are baked in; logits = [neg, pos] cos / temp. No segmentation graph (lung items only).",
        notes=notes, verify=verify, params=count_params(graph))
