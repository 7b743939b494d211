"""`random-checkpoints`: randomly initialised checkpoints with the EXACT architectures, written in
the formats the real files have, so that the exporters run the same load code path without the
real weights. VERIFICATION ONLY: these are not medical models (a marker file says so, and bundles
exported from them are written with `demo = true` and a RANDOMLY INITIALISED description).

Written to --out (the names `all --weights` looks for):
  BiomedVLP-CXR-BERT-specialized/  BERT-base of the CXR-BERT configuration (vocab 30522, 768 wide,
                                   12 layers, 12 heads) with random weights, saved by transformers,
                                   and a locally generated WordPiece vocabulary (special tokens at
                                   BERT's ids, characters and their ## pieces, the prompt words,
                                   [unusedN] filler). The real model cannot be downloaded here.
                                   config.json also has `add_type_embeddings: false`, which
                                   fVLM's lavis BERT requires (see README).
  CT_VocabFine_v2.pt               CTCLIP state dict (raw, as torch.save(model.state_dict())); its
                                   text encoder re-initialised (differs from the BERT directory, as
                                   a fine-tuned checkpoint does); temperature ln(100) (CLIP's cap).
  supervised_model.pt              {"model_state_dict", "target_pathologies" (15 MosMed), "epoch"}
  ct_classifier.pt                 EncoderUNetModel state dict (raw); zero-initialised layers
                                   (zero_module) re-drawn so that every branch contributes
  pli_2.json + pli_2_model_last_e_15.ckpt
                                   MedNeXt config (22 classes: the demo list, the real ones are not
                                   public) and {"model_state": {"module." + key: tensor}, "epoch"}
  mae_pretrain_vit_base.pth        {"model": MAE ViT-B/16 encoder keys (timm naming) + mask_token
                                   and a decoder key}, random
  fvlm_model.pth                   {"model": BlipPretrain state dict}: query tokens, projections and
                                   text encoder re-drawn
  lightgbm_model.pkl, lightgbm_thoracic_model.pkl
                                   joblib LGBMClassifier pickles fitted on random rows with the demo
                                   ensemble's feature names (needs lightgbm, scikit-learn, pandas)
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from . import contracts
from .bundle import RANDOM_MARKER
from .reference import ExportError, ReferenceRepo

BERT_CONFIG = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.25, attention_probs_dropout_prob=0.25,
                   max_position_embeddings=512, type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12,
                   pad_token_id=0)
MEDNEXT_CLASSES = ["normal"] + contracts.MOSMED_PATHOLOGIES + [
    "lung_nodules", "consolidation", "ground_glass_opacity", "lymphadenopathy", "pericardial_effusion", "bronchiectasis"]
DEMO_ENSEMBLE = Path(__file__).resolve().parents[2] / "demo_models" / "ensemble" / "main.txt"


def wordpiece_vocab(texts, size: int = 30522) -> list[str]:
    """A deterministic WordPiece vocabulary: BERT's special-token ids, ASCII characters and their
    ## continuations, the lower-cased words of `texts`, then [unusedN] up to `size`."""
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    vocab += chars + ["##" + c for c in chars if c.isalnum()]
    words = []
    for t in texts:
        for w in re.findall(r"[a-z0-9]+|[^a-z0-9\s]", t.lower()):
            if w not in words and w not in vocab:
                words.append(w)
    vocab += words
    n = 99
    while len(vocab) < size:
        vocab.append(f"[unused{n}]")
        n += 1
    return vocab[:size]


def prompt_texts(repo: ReferenceRepo) -> list[str]:
    texts = [t.format(p) for p in contracts.CTCLIP_PATHOLOGIES for t in contracts.CTCLIP_PROMPTS]
    try:
        from .fvlm import TEST_ITEMS_SOURCE

        texts += [x for it in repo.attribute_literal(*TEST_ITEMS_SOURCE) for x in it[2:]]
    except Exception:  # noqa: BLE001 - the vocabulary is still complete at character level
        pass
    return texts


def write_bert(repo: ReferenceRepo, d: Path, seed: int) -> None:
    import torch
    from transformers import BertConfig, BertModel

    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.txt").write_text("\n".join(wordpiece_vocab(prompt_texts(repo))) + "\n")
    (d / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512,
                                                          "tokenizer_class": "BertTokenizer"}, indent=2))
    torch.manual_seed(seed)
    model = BertModel(BertConfig(**BERT_CONFIG))
    model.save_pretrained(str(d), safe_serialization=False)  # config.json + pytorch_model.bin (the hub repo's files)
    # fVLM's lavis BERT (med.py) reads `add_type_embeddings` from this config.json: a site's fVLM copy of
    # CXR-BERT carries it (LAVIS' med_config default: false); transformers' BertModel ignores it
    cfg = json.loads((d / "config.json").read_text())
    cfg["add_type_embeddings"] = False
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def _reinit_text(text_model, seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    text_model.apply(text_model._init_weights)


def write_ctclip(repo, out: Path, bert: Path, seed: int) -> None:
    import torch

    from .ctclip import build_ctclip

    torch.manual_seed(seed)
    clip, _ = build_ctclip(repo, bert)
    _reinit_text(clip.text_transformer, seed + 100)
    with torch.no_grad():
        clip.temperature.fill_(math.log(100.0))
    torch.save(clip.state_dict(), out / contracts.DEFAULT_FILES["ctclip"]["checkpoint"])


def write_supervised(repo, out: Path, bert: Path, seed: int) -> None:
    import torch

    from .ctclip import build_ctclip

    repo.activate()
    from ct_clip_classifier import SimpleCTCLIPClassifier

    torch.manual_seed(seed)
    clip, tok = build_ctclip(repo, bert)
    _reinit_text(clip.text_transformer, seed + 100)
    model = SimpleCTCLIPClassifier(clip, num_classes=len(contracts.MOSMED_PATHOLOGIES), latent_norm="layernorm", reinit_head=False)
    with torch.no_grad():
        model.pre_head_norm.weight.normal_(1.0, 0.1)
        model.pre_head_norm.bias.normal_(0.0, 0.1)
    torch.save({"model_state_dict": model.state_dict(), "target_pathologies": list(contracts.MOSMED_PATHOLOGIES), "epoch": 0},
               out / contracts.DEFAULT_FILES["supervised"]["checkpoint"])


def write_diffusion(repo, out: Path, seed: int) -> None:
    import torch

    from .diffusion import build

    torch.manual_seed(seed)
    model = build(repo)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0.0, 0.02)
    torch.save(model.state_dict(), out / contracts.DEFAULT_FILES["diffusion"]["checkpoint"])


def write_mednext(repo, out: Path, seed: int) -> None:
    import torch

    repo.require("mednext")
    repo.activate()
    from mednext.mednext_classifier3d import MedNeXt3DClassifier

    cfg = {"classes": MEDNEXT_CLASSES, "roi_size": list(contracts.MEDNEXT_DEFAULT_ROI), "crop_by_body_part": False,
           "image_dtype": "float16", "probability_activation": "sigmoid", "depth_config": [2, 2, 2, 2, 2],
           "expansion_ratio": [4, 4, 4, 4, 4], "in_channels": 1, "base_channels": 32, "kernel_size": 3,
           "norm_type": "group", "use_grn": False, "dropout": 0.0, "amp": True,
           "_note": "RANDOM verification config written by tools/export random-checkpoints; class list = the demo choice"}
    files = contracts.DEFAULT_FILES["mednext"]
    (out / files["config"]).write_text(json.dumps(cfg, indent=2))
    torch.manual_seed(seed)
    model = MedNeXt3DClassifier(in_channels=1, num_classes=len(MEDNEXT_CLASSES), base_channels=32, depth_config=(2, 2, 2, 2, 2),
                                exp_r=(4, 4, 4, 4, 4), kernel_size=3, norm_type="group", grn=False, dropout=0.0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.normal_(1.0, 0.1)
                m.bias.normal_(0.0, 0.1)
    state = {"module." + k: v for k, v in model.state_dict().items()}  # as saved from DataParallel
    torch.save({"model_state": state, "epoch": 15}, out / files["checkpoint"])


def write_mae(out: Path, seed: int) -> Path:
    import torch
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
                            qkv_bias=True, num_classes=0)
    sd = dict(vit.state_dict())
    sd["mask_token"] = torch.zeros(1, 1, 512)
    sd["decoder_embed.weight"] = torch.randn(512, 768) * 0.02
    p = out / contracts.DEFAULT_FILES["fvlm"]["mae_weights"]
    torch.save({"model": sd}, p)
    return p


def write_fvlm(repo, out: Path, bert: Path, seed: int) -> None:
    import torch

    from .fvlm import construct

    mae = write_mae(out, seed)
    torch.manual_seed(seed)
    model, _ = construct(repo, mae, bert, None)
    _reinit_text(model.text_encoder, seed + 100)
    with torch.no_grad():
        model.query_tokens.normal_(0.0, 0.5)
        for proj in model.vision_projs:
            proj.weight.normal_(0.0, 0.05)
    torch.save({"model": model.state_dict(), "epoch": 0}, out / contracts.DEFAULT_FILES["fvlm"]["checkpoint"])


def write_lightgbm(out: Path, seed: int) -> None:
    import joblib
    import lightgbm
    import numpy as np
    import pandas as pd

    line = next(x for x in DEMO_ENSEMBLE.read_text().splitlines() if x.startswith("feature_names="))
    names = line.split("=", 1)[1].split(" ")
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.random((400, len(names))), columns=names)
    for fname, shift in (("main", 0.0), ("thoracic", 0.3)):
        y = (x.iloc[:, :20].mean(axis=1) + 0.1 * rng.normal(size=len(x)) > 0.5 + shift * 0.1).astype(int)
        clf = lightgbm.LGBMClassifier(n_estimators=40, num_leaves=7, min_child_samples=10, verbose=-1, random_state=seed)
        clf.fit(x, y)
        joblib.dump(clf, out / contracts.DEFAULT_FILES["lightgbm"][fname])


def main(a) -> int:
    import gc

    repo = ReferenceRepo(a.repo)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RANDOM_MARKER).write_text(
        "Randomly initialised checkpoints written by tools/export (random-checkpoints) to verify the exporter.\n"
        "They have the real architectures and file formats but RANDOM weights: NOT MEDICAL MODELS.\n")
    only = [x for x in a.only.split(",") if x] or ["bert", "ctclip", "supervised", "diffusion", "mednext", "fvlm", "lightgbm"]
    bert = out / contracts.DEFAULT_FILES["text_encoder"]
    steps = {
        "bert": lambda: write_bert(repo, bert, a.seed),
        "ctclip": lambda: write_ctclip(repo, out, bert, a.seed + 1),
        "supervised": lambda: write_supervised(repo, out, bert, a.seed + 2),
        "diffusion": lambda: write_diffusion(repo, out, a.seed + 3),
        "mednext": lambda: write_mednext(repo, out, a.seed + 4),
        "fvlm": lambda: write_fvlm(repo, out, bert, a.seed + 5),
        "lightgbm": lambda: write_lightgbm(out, a.seed + 6),
    }
    for name in only:
        if name not in steps:
            raise ExportError(f"--only: unknown {name}")
        if name in ("ctclip", "supervised", "fvlm") and not (bert / "config.json").exists():
            steps["bert"]()
        print(f"[random-checkpoints] {name} ...", flush=True)
        steps[name]()
        gc.collect()
    for p in sorted(out.iterdir()):
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
        print(f"  {p.name}: {size / 2**20:,.1f} MiB")
    return 0
