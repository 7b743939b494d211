"""CT-CLIP zero-shot (celsus-reference §3.1-3.2) and the supervised CT-CLIP classifier (§3.3).

Both are built with the reference's own classes and hyper-parameters
(`scripts/universal_ct_inference.py` UniversalCTInference.load_model and
`api/inference_service.py` SupervisedModelInference.load_model):

    CTViT(dim=512, codebook_size=8192, image_size=480, patch_size=20, temporal_patch_size=10,
          spatial_depth=4, temporal_depth=4, dim_head=32, heads=8)
    CTCLIP(image_encoder, text_encoder=BertModel(<CXR-BERT>), dim_image=294912, dim_text=768,
           dim_latent=512, extra_latent_projection=False, use_mlm=False,
           downsample_image_embeds=False, use_all_token_embeds=False)
    SimpleCTCLIPClassifier(ct_clip, num_classes=len(labels), latent_norm="layernorm", reinit_head=False)

and loaded as the reference loads them (`model_state_dict` if present, else the dict itself;
`load_state_dict(strict=False)`). The text encoder and tokenizer (BiomedVLP-CXR-BERT-specialized)
come from a local directory (--text-encoder): nothing is downloaded.

Exported graphs:
  ctclip      image [1,1,240,480,480] -> CTViT tokens -> mean over t -> flatten -> to_visual_latent
              -> L2 norm -> exp(T) * cos with the 110 baked prompt latents -> logits [1,55,2]
              ([present, absent] per pathology; the service takes softmax(pair)[0]).
  supervised  image -> the same image latent -> LayerNorm (pre_head_norm) -> Linear -> logits [1,N]
              (sigmoid in the service).
"""

from __future__ import annotations

from pathlib import Path

from . import contracts
from .common import Exported, count_params, diff_stats, load_torch, sigmoid, softmax_pair
from .reference import ExportError, ReferenceRepo, redirect_cuda, unwrap_beartype

CTVIT_KWARGS = dict(dim=512, codebook_size=8192, image_size=480, patch_size=20, temporal_patch_size=10,
                    spatial_depth=4, temporal_depth=4, dim_head=32, heads=8)
CTCLIP_KWARGS = dict(dim_image=294912, dim_text=768, dim_latent=512, extra_latent_projection=False, use_mlm=False,
                     downsample_image_embeds=False, use_all_token_embeds=False)
# parameters the exported graphs use: a checkpoint without them would leave them randomly
# initialised (the reference loads with strict=False and would silently do so)
GRAPH_KEYS_CTCLIP = ("visual_transformer.", "to_visual_latent.", "temperature", "to_text_latent.")
GRAPH_KEYS_SUPERVISED = ("ct_clip.visual_transformer.", "ct_clip.to_visual_latent.", "pre_head_norm.", "classifier.")


class MissingWeights(ExportError):
    pass


def _modules(repo: ReferenceRepo):
    repo.activate()
    import transformer_maskgit.transformer_maskgit.attention as attn_mod
    import transformer_maskgit.transformer_maskgit.ctvit as ctvit_mod
    from CT_CLIP.ct_clip import ct_clip as ct_clip_mod

    redirect_cuda([ctvit_mod, attn_mod, ct_clip_mod])
    unwrap_beartype(attn_mod)
    return ctvit_mod, ct_clip_mod


def build_ctclip(repo: ReferenceRepo, text_encoder: Path):
    """(CTCLIP, tokenizer), random weights, as the reference constructs them."""
    from transformers import BertModel, BertTokenizer

    ctvit_mod, ct_clip_mod = _modules(repo)
    tokenizer = BertTokenizer.from_pretrained(str(text_encoder), do_lower_case=True)
    # CTCLIP.__init__ fetches the tokenizer by hub id unless one is cached on the class
    ct_clip_mod.CTCLIP._cached_tokenizer = tokenizer
    text = BertModel.from_pretrained(str(text_encoder))
    text.resize_token_embeddings(len(tokenizer))
    image = ctvit_mod.CTViT(**CTVIT_KWARGS)
    clip = ct_clip_mod.CTCLIP(image_encoder=image, text_encoder=text, **CTCLIP_KWARGS)
    return clip, tokenizer


def load_like_reference(model, checkpoint, graph_prefixes, allow_missing: bool, notes: list) -> None:
    state = checkpoint["model_state_dict"] if "model_state_dict" in checkpoint else checkpoint
    res = model.load_state_dict(state, strict=False)
    missing = [k for k in res.missing_keys if k.startswith(graph_prefixes)]
    notes.append(f"load_state_dict(strict=False): {len(res.missing_keys)} missing, {len(res.unexpected_keys)} unexpected keys"
                 + (f"; missing keys the graph uses: {missing[:8]}{' ...' if len(missing) > 8 else ''}" if missing else ""))
    if missing and not allow_missing:
        raise MissingWeights(f"the checkpoint lacks {len(missing)} weights the exported graph uses (e.g. {missing[:4]}); "
                             "the reference (strict=False) would keep them randomly initialised. "
                             "--allow-missing-keys exports that anyway")
    if hasattr(model, "visual_transformer"):
        vq = model.visual_transformer.vq._codebook
    else:
        vq = model.ct_clip.visual_transformer.vq._codebook
    if not bool(vq.initted):
        raise MissingWeights("the VQ codebook is marked un-initialised (initted = 0): the reference would run "
                             "k-means at inference; not exportable")


def _freeze_vq_flag(clip) -> None:
    """`if self.initted:` (a buffer) is data-dependent for torch.export; after the check above it
    is known to be true, so it becomes the Python constant True (same computation)."""
    cb = clip.visual_transformer.vq._codebook
    if "initted" in cb._buffers:
        del cb._buffers["initted"]
        cb.initted = True


def _drop_unused(clip) -> None:
    # deep copies kept by CTCLIP for extra_latent_projection=True; unused here (saves 0.6 GB)
    for name in ("to_visual_latent_extra", "to_text_latent_extra"):
        if hasattr(clip, name):
            delattr(clip, name)


def text_latents(clip, tokenizer, names):
    """[2N, 512]: L2-normalised `to_text_latent(BERT CLS)` of "{p} is present." / "{p} is not
    present." per pathology, tokenised as the reference (max_length 512 padding, truncation)."""
    import torch
    import torch.nn.functional as F

    rows = []
    with torch.no_grad():
        for p in names:
            tok = tokenizer([t.format(p) for t in contracts.CTCLIP_PROMPTS], return_tensors="pt", padding="max_length",
                            truncation=True, max_length=contracts.CTCLIP_MAX_LENGTH)
            enc = clip.text_transformer(tok.input_ids, attention_mask=tok.attention_mask)[0]
            rows.append(F.normalize(clip.to_text_latent(enc[:, 0, :]), dim=-1))
    return torch.cat(rows, dim=0)


def _image_latent(visual_transformer, to_visual_latent, image):
    import torch
    import torch.nn.functional as F

    enc = visual_transformer(image, return_encoded_tokens=True)
    enc = torch.mean(enc, dim=1)
    enc = enc.view(enc.shape[0], -1)
    return F.normalize(to_visual_latent(enc), dim=-1)


def _graphs():
    import torch
    from torch import nn

    class CtclipGraph(nn.Module):
        def __init__(self, clip, latents):
            super().__init__()
            self.visual_transformer = clip.visual_transformer
            self.to_visual_latent = clip.to_visual_latent
            self.temperature = clip.temperature
            self.register_buffer("text_latents", latents.detach().clone())

        def forward(self, image):
            img = _image_latent(self.visual_transformer, self.to_visual_latent, image)
            sims = (img @ self.text_latents.t()) * self.temperature.exp()
            return sims.view(1, -1, 2)

    class SupervisedGraph(nn.Module):
        def __init__(self, clf):
            super().__init__()
            self.visual_transformer = clf.ct_clip.visual_transformer
            self.to_visual_latent = clf.ct_clip.to_visual_latent
            self.pre_head_norm = clf.pre_head_norm
            self.classifier = clf.classifier
            self.l2 = clf.latent_norm == "l2"

        def forward(self, image):
            lat = _image_latent(self.visual_transformer, self.to_visual_latent, image)
            lat = torch.nn.functional.normalize(lat, dim=1) if self.l2 else self.pre_head_norm(lat)
            return self.classifier(lat)

    return CtclipGraph, SupervisedGraph


VQ_TIE = 1e-3  # a code the two runtimes pick differently must be within this cosine of the reference's best


def _cached_encoder(image, tokens):
    """A stand-in for CTViT in the verification's reference forwards: returns the given quantised
    tokens for the verification image (the reference's CTViT pass is run once, separately)."""
    import torch

    class CachedEncoder(torch.nn.Module):
        def forward(self, video, return_encoded_tokens=False, **kwargs):
            assert return_encoded_tokens and video is image
            return tokens

    return CachedEncoder()


def vq_check(encoder, image, threads=None) -> dict:
    """The vector quantiser is an argmax over 8192 cosine similarities: where the best two codes
    are (nearly) tied, float32 rounding differences between PyTorch and ONNX Runtime upstream of
    it pick different codes (as PyTorch on CPU vs CUDA would). This runs the reference CTViT up to
    the quantiser and the same part of the graph (exported separately, with the code indices as
    output), and returns the reference's quantised tokens (own codes) and the tokens with the
    codes ONNX Runtime chose, plus statistics of the disagreements."""
    import tempfile

    import numpy as np
    import torch
    import torch.nn.functional as F

    from .common import session

    class UpToVQ(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = encoder

        def forward(self, video):
            tokens = self.enc.encode(self.enc.to_patch_emb(video))
            flat = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])
            _, idx = self.enc.vq._codebook(flat)
            return flat, idx

    aux = UpToVQ().eval()
    with torch.no_grad():
        flat_t, idx_t = aux(image)
        q_t, idx_q, _ = encoder.vq(flat_t)
    assert torch.equal(idx_t, idx_q)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "up_to_vq.onnx"
        with torch.no_grad():
            torch.onnx.export(aux, (image,), str(path), dynamo=True, input_names=["image"], output_names=["tokens", "codes"],
                              external_data=False, verbose=False)
        sess = session(path, threads)
        flat_o, idx_o = sess.run(None, {"image": image.numpy()})
        del sess
    idx_o = torch.from_numpy(idx_o).to(idx_t.dtype)
    flat_o = torch.from_numpy(flat_o)
    embed = encoder.vq._codebook.embed[0]
    shape = (1, 24, 24, 24, embed.shape[-1])
    flipped = (idx_o != idx_t).nonzero(as_tuple=True)
    gaps = []
    with torch.no_grad():
        if flipped[0].numel():
            fn = F.normalize(flat_t[flipped], dim=-1)
            en = F.normalize(embed, dim=-1)
            best = (fn * en[idx_t[flipped]]).sum(-1)
            other = (fn * en[idx_o[flipped]]).sum(-1)
            gaps = (best - other).tolist()
        rel = float((flat_o - flat_t).abs().max() / flat_t.abs().max())
    return {"tokens_reference": q_t.view(shape), "tokens_onnx_codes": embed[idx_o].view(shape),
            "pre_vq_max_rel_diff": rel, "code_flips": int(flipped[0].numel()), "codes": int(idx_t.numel()),
            "max_flip_gap": max(gaps) if gaps else 0.0}


def _vq_summary(vq: dict, e2e: float, same: float, tol: float) -> dict:
    passed = same <= tol and vq["max_flip_gap"] <= VQ_TIE
    return {"max_abs_diff": same, "max_abs_diff_end_to_end": e2e, "passed": passed,
            "pre_vq_max_rel_diff": vq["pre_vq_max_rel_diff"], "vq_code_flips": f"{vq['code_flips']}/{vq['codes']}",
            "vq_max_flip_cos_gap": vq["max_flip_gap"]}


def export_ctclip(repo: ReferenceRepo, checkpoint: Path, text_encoder: Path, volume, allow_missing=False) -> Exported:
    import numpy as np
    import torch

    repo.require("ctclip")
    names = contracts.CTCLIP_PATHOLOGIES
    ref_names = repo.literal("api/inference_service.py", "CTCLIP_PATHOLOGIES")
    if list(ref_names) != names:
        raise ExportError("the checkout's CTCLIP_PATHOLOGIES differ from the 55 names ctclip-svc serves")
    notes = []
    clip, tokenizer = build_ctclip(repo, text_encoder)
    ck = load_torch(checkpoint)  # the reference: torch.load(path, map_location=device)
    load_like_reference(clip, ck, GRAPH_KEYS_CTCLIP, allow_missing, notes)
    del ck
    _drop_unused(clip)
    clip.eval()
    latents = text_latents(clip, tokenizer, names)
    _freeze_vq_flag(clip)
    CtclipGraph, _ = _graphs()
    graph = CtclipGraph(clip, latents).eval()
    x = torch.from_numpy(np.ascontiguousarray(volume))[None]  # [1,1,240,480,480]
    notes.append(f"logit scale exp(T) = {float(clip.temperature.exp()):.6g}")

    def verify(sess, tol):
        vq = vq_check(clip.visual_transformer, x)
        real_encoder = clip.visual_transformer
        ref = {}
        try:
            for key in ("tokens_reference", "tokens_onnx_codes"):
                clip.visual_transformer = _cached_encoder(x, vq[key])
                scores = []
                with torch.no_grad():
                    for p in names:  # the reference's predict_pathologies, one pathology at a time
                        tok = tokenizer([t.format(p) for t in contracts.CTCLIP_PROMPTS], return_tensors="pt",
                                        padding="max_length", truncation=True, max_length=contracts.CTCLIP_MAX_LENGTH)
                        scores.append(clip(tok, x, device=torch.device("cpu")).numpy())
                ref[key] = np.stack(scores)[None]  # [1,55,2]
                if vq["code_flips"] == 0:
                    ref["tokens_onnx_codes"] = ref[key]
                    break
        finally:
            clip.visual_transformer = real_encoder
        out = sess.run(None, {"image": x.numpy()})[0]
        p_out = softmax_pair(out, 0)
        r = _vq_summary(vq, diff_stats(softmax_pair(ref["tokens_reference"], 0), p_out),
                        diff_stats(softmax_pair(ref["tokens_onnx_codes"], 0), p_out), tol)
        r["max_abs_diff_logits"] = diff_stats(ref["tokens_onnx_codes"], out)
        r["compared"] = ("P(present) of the 55 pathologies: the reference's CTCLIP.forward per pathology vs the graph; "
                         "max_abs_diff with the VQ codes ONNX Runtime chose, max_abs_diff_end_to_end with PyTorch's own")
        return r

    return Exported(
        model="ctclip", module=graph, example_inputs=(x,),
        input_specs=contracts.io_spec("ctclip", n_labels=len(names))[0],
        output_specs=contracts.io_spec("ctclip", n_labels=len(names))[1],
        labels=contracts.labels_section("ctclip", names), recipe=dict(contracts.RECIPES["ctclip"]),
        sources={"checkpoint": checkpoint, "text_encoder": text_encoder},
        description="CT-CLIP zero-shot (CT_VocabFine): CTViT image encoder + latent projection; the 110 prompt "
                    "latents ('{p} is present.' / '{p} is not present.') are baked in; logits = exp(T)*[cos(present), cos(absent)].",
        notes=notes, verify=verify, params=count_params(graph))


def export_supervised(repo: ReferenceRepo, checkpoint: Path, text_encoder: Path, volume, allow_missing=False) -> Exported:
    import numpy as np
    import torch

    repo.require("supervised")
    repo.activate()
    from ct_clip_classifier import SimpleCTCLIPClassifier

    notes = []
    ck = load_torch(checkpoint, weights_only=False)  # as SupervisedModelInference.load_model
    if "target_pathologies" in ck:
        labels = [str(x) for x in ck["target_pathologies"]]
        notes.append(f"labels: the checkpoint's target_pathologies ({len(labels)})")
    else:
        labels = list(contracts.MOSMED_PATHOLOGIES)
        notes.append("labels: the checkpoint has no target_pathologies; the reference's MOSMED_PATHOLOGIES (15)")
    lacking = [m for m in contracts.MOSMED_PATHOLOGIES if m not in labels]
    if lacking:
        notes.append(f"WARNING: the labels lack {lacking}: the reference's feature builder requires all 15 MosMed names")
    clip, tokenizer = build_ctclip(repo, text_encoder)
    model = SimpleCTCLIPClassifier(clip, num_classes=len(labels), latent_norm="layernorm", reinit_head=False)
    model.tokenizer = tokenizer
    load_like_reference(model, ck, GRAPH_KEYS_SUPERVISED, allow_missing, notes)
    del ck
    _drop_unused(clip)
    model.eval()
    _freeze_vq_flag(clip)
    _, SupervisedGraph = _graphs()
    graph = SupervisedGraph(model).eval()
    x = torch.from_numpy(np.ascontiguousarray(volume))[None]

    def verify(sess, tol):
        vq = vq_check(clip.visual_transformer, x)
        real_encoder = clip.visual_transformer
        ref = {}
        try:
            for key in ("tokens_reference", "tokens_onnx_codes"):
                clip.visual_transformer = _cached_encoder(x, vq[key])
                with torch.no_grad():
                    ref[key] = model(x)["logits"].numpy()  # the reference's forward (dummy-text BERT pass included)
        finally:
            clip.visual_transformer = real_encoder
        out = sess.run(None, {"image": x.numpy()})[0]
        r = _vq_summary(vq, diff_stats(sigmoid(ref["tokens_reference"]), sigmoid(out)),
                        diff_stats(sigmoid(ref["tokens_onnx_codes"]), sigmoid(out)), tol)
        r["max_abs_diff_logits"] = diff_stats(ref["tokens_onnx_codes"], out)
        r["compared"] = (f"sigmoid of the {len(labels)} logits: SimpleCTCLIPClassifier.forward vs the graph; max_abs_diff "
                         "with the VQ codes ONNX Runtime chose, max_abs_diff_end_to_end with PyTorch's own")
        return r

    ins, outs = contracts.io_spec("supervised", n_labels=len(labels))
    return Exported(
        model="supervised", module=graph, example_inputs=(x,), input_specs=ins, output_specs=outs,
        labels=contracts.labels_section("supervised", labels), recipe=dict(contracts.RECIPES["supervised"]),
        sources={"checkpoint": checkpoint, "text_encoder": text_encoder},
        description="Supervised CT-CLIP classifier: CTViT image encoder + latent projection + L2 norm + LayerNorm + Linear "
                    "(sigmoid in the service).",
        notes=notes, verify=verify, params=count_params(graph))
