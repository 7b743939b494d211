#!/usr/bin/env python3
"""Real-size latency check (issue 3 item 5): ONNX graphs with the real models' input sizes and
architectures (celsus-reference §3.1-3.6) but RANDOM weights, timed with onnxruntime.

Not the demo graphs, not medical models: only the compute load is real. Each graph follows the
reference architecture closely enough that its FLOPs and memory traffic are those of the real
model:
  ctclip      CTViT encoder on [1,1,240,480,480]: 20x20x10 patches -> 24x24x24 tokens, LayerNorm(4000)
              -> Linear(4000,512) -> LayerNorm; 4 spatial layers (24 x 576 tokens, continuous
              position bias MLP) + 4 temporal layers (576 x 24 tokens), each PEG (depthwise causal
              conv3d) + attention (8 heads x 32, q/k L2-normalised) + GEGLU FF (1365); final LN;
              VQ (cosine argmax over an 8192 x 512 codebook); mean over t; Linear(294912,512);
              110 prompt embeddings -> logits [1,55,2]. (supervised = the same encoder and latent
              projection with a LayerNorm + Linear(512,15) head: same cost, not run separately.)
  diffusion   EncoderUNetModel (width 32, mult 1,1,2,2,4,4, 2 res blocks, attention at 32/16/8 px,
              scale-shift norm, res-block down-sampling, attention pooling head) on [16,1,256,256]
              + timesteps; a study is 14 batches (216 slices).
  mednext     MedNeXt 3-D classifier on [1,1,320,320,224] (float16 input, float32 compute on CPU):
              stem conv k3 s2 (-> 159x159x111), 5 stages x 2 blocks (dw conv3 + GroupNorm(C) +
              1x1 x4 + GELU + 1x1), down blocks with stride 2, avg pool, Linear(512,22).
  fvlm        3-D ViT-B: Conv3d(1,768,k=s=(16,16,32)) on [1,1,112,288,352] -> 7x18x11 = 1386
              tokens, 12 blocks (12 heads, MLP 3072), organ pooling (mask max-pool, 4-level
              key/value, MultiheadAttention 768/4 heads), projection 256, 18 x 2 text features.
              A study runs it once per organ (lung, heart, aorta: 3 passes).

    python3 tools/demo_models/realsize_bench.py [--models ctclip,diffusion,mednext,fvlm]
        [--runs 1] [--diffusion-batches 14] [--cuda] [--threads N] [--json out.json]

Prints one JSON object {model: {params, gflops_estimate, cpu_ms, ...}} (cuda_ms with --cuda when
the CUDAExecutionProvider of an onnxruntime-gpu install is available). gflops_estimate counts
2 x multiply-adds of MatMul / Conv / Gemm from ONNX shape inference (elementwise ops excluded),
per study. Needs numpy, onnx, onnxruntime (or onnxruntime-gpu for --cuda).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, shape_inference

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_demo_models import G, IR_VERSION, OPSET  # noqa: E402

F32 = TensorProto.FLOAT


class B(G):
    """Graph builder with random weights and the usual layers."""

    def __init__(self, name: str, seed: int = 0):
        super().__init__(name)
        self.rng = np.random.default_rng(seed)

    def w(self, shape, std=0.02):
        return self.c(self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std), hint="w")

    def linear(self, x, din, dout, bias=True, std=None):
        y = self.op("MatMul", x, self.w((din, dout), std or 1.0 / math.sqrt(din)))
        return self.add(y, self.w((dout,), 0.01)) if bias else y

    def ln(self, x, dim, eps=1e-5):
        return self.op("LayerNormalization", x, self.c(np.ones(dim, np.float32)), self.c(np.zeros(dim, np.float32)),
                       axis=-1, epsilon=eps)

    def gelu(self, x):   # exact (erf) GELU; ORT fuses the pattern
        return self.mul(self.mul(x, self.c(0.5)), self.add(self.c(1.0), self.op("Erf", self.mul(x, self.c(1 / math.sqrt(2))))))

    def silu(self, x):
        return self.mul(x, self.op("Sigmoid", x))

    def l2norm(self, x, axis=-1):
        n = self.op("Sqrt", self.op("Max", self.sum(self.mul(x, x), axes=[axis], keepdims=1), self.c(1e-12)))
        return self.div(x, n)

    def conv(self, x, cin, cout, k, stride=1, pad=0, groups=1, dims=2, bias=True):
        ks = [k] * dims if isinstance(k, int) else list(k)
        st = [stride] * dims if isinstance(stride, int) else list(stride)
        fan = (cin // groups) * int(np.prod(ks))
        ins = [x, self.w([cout, cin // groups] + ks, 1.0 / math.sqrt(fan))]
        if bias:
            ins.append(self.w((cout,), 0.01))
        return self.op("Conv", *ins, kernel_shape=ks, strides=st, pads=[pad] * (2 * dims) if isinstance(pad, int) else pad,
                       group=groups)

    def split(self, x, axis, n):
        outs = [self._name("split") for _ in range(n)]
        self.nodes.append(helper.make_node("Split", [x], outs, axis=axis, num_outputs=n) if OPSET >= 18 else
                          helper.make_node("Split", [x], outs, axis=axis))
        return outs


def finish(b: B, inputs, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(b.nodes, b.name, inputs, outputs, initializer=b.inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ct-realsize-bench")
    m.ir_version = IR_VERSION
    return m


# ---------------------------------------------------------------------------------------------
# CT-CLIP (CTViT encoder + latent + prompt similarities)
# ---------------------------------------------------------------------------------------------
def cpb_tables(n=24):
    """Continuous position bias inputs: unique relative offsets (2n-1)^2 x 2 (log-spaced) and
    the gather index [n^2 * n^2]."""
    r = np.arange(-(n - 1), n, dtype=np.float32)
    rel = np.stack(np.meshgrid(r, r, indexing="ij"), -1).reshape(-1, 2)
    rel = np.sign(rel) * np.log(np.abs(rel) + 1)
    pos = np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"), -1).reshape(-1, 2)
    d = pos[:, None, :] - pos[None, :, :] + (n - 1)
    idx = (d[..., 0] * (2 * n - 1) + d[..., 1]).reshape(-1).astype(np.int64)
    return rel, idx


def ctvit_layer(b: B, x, n, L, bias=None, dim=512, heads=8, dh=32):
    """x [n, L, dim] whose memory is read as a (24,24,24) video by the PEG."""
    v = b.op("Transpose", b.reshape(x, [1, 24, 24, 24, dim]), perm=[0, 4, 1, 2, 3])
    v = b.op("Pad", v, b.c([0, 0, 2, 1, 1, 0, 0, 0, 1, 1], np.int64))         # causal on the first axis
    v = b.conv(v, dim, dim, 3, groups=dim, dims=3)
    x = b.add(x, b.reshape(b.op("Transpose", v, perm=[0, 2, 3, 4, 1]), [n, L, dim]))
    xn = b.ln(x, dim)
    q = b.linear(xn, dim, heads * dh, bias=False)
    kv = b.linear(x, dim, 2 * heads * dh, bias=False)
    k, vv = b.split(kv, 2, 2)

    def hs(t):
        return b.op("Transpose", b.reshape(t, [n, L, heads, dh]), perm=[0, 2, 1, 3])   # [n,h,L,dh]

    q = b.mul(b.l2norm(hs(q)), b.w((dh,), 1.0))
    k = b.mul(b.l2norm(hs(k)), b.w((dh,), 1.0))
    sim = b.mul(b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2])), b.c(8.0))
    if bias is not None:
        sim = b.add(sim, bias)
    att = b.op("Softmax", sim, axis=-1)
    o = b.op("MatMul", att, hs(vv))
    o = b.reshape(b.op("Transpose", o, perm=[0, 2, 1, 3]), [n, L, heads * dh])
    x = b.add(x, b.linear(o, heads * dh, dim, bias=False))
    h = b.linear(b.ln(x, dim), dim, 2 * 1365, bias=False)
    a, gt = b.split(h, 2, 2)
    h = b.linear(b.mul(a, b.gelu(gt)), 1365, dim, bias=False)
    return b.add(x, h)


def build_ctclip():
    b = B("ctclip_realsize", 1)
    x = b.reshape("image", [1, 1, 24, 10, 24, 20, 24, 20])
    x = b.op("Transpose", x, perm=[0, 2, 4, 6, 1, 3, 5, 7])
    x = b.reshape(x, [13824, 4000])
    x = b.ln(b.linear(b.ln(x, 4000), 4000, 512), 512)
    # continuous position bias (2 dims, log distances), MLP on the unique offsets, gathered
    rel, idx = cpb_tables()
    h = b.op("LeakyRelu", b.linear(b.c(rel), 2, 512), alpha=0.1)
    h = b.op("LeakyRelu", b.linear(h, 512, 512), alpha=0.1)
    h = b.linear(h, 512, 8)                                                  # [2209, 8]
    bias = b.reshape(b.op("Transpose", b.op("Gather", h, b.c(idx, np.int64), axis=0), perm=[1, 0]), [8, 576, 576])
    x = b.reshape(x, [24, 576, 512])
    for _ in range(4):
        x = ctvit_layer(b, x, 24, 576, bias)
    x = b.op("Transpose", x, perm=[1, 0, 2])                                 # [576, 24, 512]
    for _ in range(4):
        x = ctvit_layer(b, x, 576, 24)
    x = b.ln(b.op("Transpose", x, perm=[1, 0, 2]), 512)                      # back to (t, hw)
    xf = b.reshape(x, [13824, 512])
    cb = b.rng.standard_normal((8192, 512), dtype=np.float32)
    cbn = cb / np.linalg.norm(cb, axis=1, keepdims=True)
    sim = b.op("MatMul", b.l2norm(xf), b.c(cbn.T.copy()))
    code = b.op("ArgMax", sim, axis=1, keepdims=0)
    qz = b.op("Gather", b.c(cb), code, axis=0)                               # [13824, 512]
    lat = b.op("ReduceMean", b.reshape(qz, [24, 576, 512]), axes=[0], keepdims=0)
    lat = b.l2norm(b.linear(b.reshape(lat, [1, 294912]), 294912, 512, bias=False))
    txt = b.rng.standard_normal((512, 110), dtype=np.float32)
    txt /= np.linalg.norm(txt, axis=0, keepdims=True)
    cos = b.op("MatMul", lat, b.c(txt))
    b.op("Mul", b.reshape(cos, [1, 55, 2]), b.c(np.float32(30.0)), out="logits")
    return finish(b, [helper.make_tensor_value_info("image", F32, [1, 1, 240, 480, 480])],
                  [helper.make_tensor_value_info("logits", F32, [1, 55, 2])])


# ---------------------------------------------------------------------------------------------
# Diffusion classifier (EncoderUNetModel)
# ---------------------------------------------------------------------------------------------
def group_norm(b: B, x, C, G=32):
    s = b.op("InstanceNormalization", b.reshape(x, [0, G, -1]), b.c(np.ones(G, np.float32)),
             b.c(np.zeros(G, np.float32)), epsilon=1e-5)
    s = b.op("Reshape", s, b.op("Shape", x))
    return b.add(b.mul(s, b.w((C, 1, 1), 1.0)), b.w((C, 1, 1), 0.01))


def resblock(b: B, x, cin, cout, emb, down=False):
    h = b.silu(group_norm(b, x, cin))
    if down:
        h = b.avgpool(h, (2, 2))
        x = b.avgpool(x, (2, 2))
    h = b.conv(h, cin, cout, 3, pad=1)
    e = b.linear(b.silu(emb), 128, 2 * cout)
    sc, sh = b.split(e, 1, 2)
    sc = b.op("Unsqueeze", sc, b.c([2, 3], np.int64))
    sh = b.op("Unsqueeze", sh, b.c([2, 3], np.int64))
    h = b.add(b.mul(group_norm(b, h, cout), b.add(b.c(1.0), sc)), sh)
    h = b.conv(b.silu(h), cout, cout, 3, pad=1)
    skip = x if cin == cout else b.conv(x, cin, cout, 1)
    return b.add(skip, h)


def attnblock(b: B, x, C, T):
    """AttentionBlock: GN, conv1d C->3C, QKVAttentionLegacy (heads of 64), conv1d C->C, residual."""
    heads = C // 64
    h = b.reshape(group_norm(b, x, C), [0, C, T])                             # [B,C,T]
    qkv = b.op("MatMul", b.w((3 * C, C), 1 / math.sqrt(C)), h)                # [B,3C,T]
    q, k, v = b.split(b.reshape(qkv, [-1, 3 * 64, T]), 1, 3)                 # [B*heads,64,T] each
    s = 1 / math.sqrt(math.sqrt(64))
    w = b.op("MatMul", b.op("Transpose", b.mul(q, b.c(s)), perm=[0, 2, 1]), b.mul(k, b.c(s)))   # [Bh,T,T]
    w = b.op("Softmax", w, axis=-1)
    a = b.op("MatMul", v, b.op("Transpose", w, perm=[0, 2, 1]))              # [Bh,64,T]
    o = b.op("MatMul", b.w((C, C), 1 / math.sqrt(C)), b.reshape(a, [-1, C, T]))
    assert heads >= 1
    return b.add(x, b.op("Reshape", o, b.op("Shape", x)))


def build_diffusion(batch=16):
    b = B("diffusion_realsize", 2)
    t = b.op("Cast", "timesteps", to=F32)
    freqs = np.exp(-math.log(10000) * np.arange(16, dtype=np.float32) / 16).astype(np.float32)
    args = b.mul(b.op("Unsqueeze", t, b.c([1], np.int64)), b.c(freqs[None]))
    emb = b.op("Concat", b.op("Cos", args), b.op("Sin", args), axis=1)       # [B,32]
    emb = b.linear(b.silu(b.linear(emb, 32, 128)), 128, 128)
    h = b.conv("image", 1, 32, 3, pad=1)
    ch, ds, res = 32, 1, 256
    mults = (1, 1, 2, 2, 4, 4)

    def attn(h, ch, res):
        return attnblock(b, h, ch, res * res)

    for lvl, m in enumerate(mults):
        for _ in range(2):
            h = resblock(b, h, ch, 32 * m, emb)
            ch = 32 * m
            if ds in (8, 16, 32):
                h = attn(h, ch, res)
        if lvl != len(mults) - 1:
            h = resblock(b, h, ch, ch, emb, down=True)
            ds *= 2
            res //= 2
    h = resblock(b, h, ch, ch, emb)
    h = attn(h, ch, res)
    h = resblock(b, h, ch, ch, emb)
    # head: GN, SiLU, AttentionPool2d(8, 128, 64 -> 2 heads, out 2)
    h = b.reshape(b.silu(group_norm(b, h, ch)), [0, ch, -1])                 # [B,128,64]
    h = b.op("Concat", b.op("ReduceMean", h, axes=[2], keepdims=1), h, axis=2)
    h = b.add(h, b.w((ch, 65), 1 / math.sqrt(ch)))
    qkv = b.op("MatMul", b.w((3 * ch, ch), 1 / math.sqrt(ch)), h)            # [B,384,65]
    q, k, v = b.split(qkv, 1, 3)
    hs = lambda z: b.reshape(z, [-1, 64, 65])                                # noqa: E731  2 heads
    s = 1 / math.sqrt(math.sqrt(64))
    w = b.op("Softmax", b.op("MatMul", b.op("Transpose", b.mul(hs(q), b.c(s)), perm=[0, 2, 1]), b.mul(hs(k), b.c(s))), axis=-1)
    a = b.reshape(b.op("MatMul", hs(v), b.op("Transpose", w, perm=[0, 2, 1])), [-1, ch, 65])
    o = b.op("MatMul", b.w((2, ch), 1 / math.sqrt(ch)), a)                   # c_proj -> [B,2,65]
    b.op("Squeeze", b.op("Slice", o, b.c([0], np.int64), b.c([1], np.int64), b.c([2], np.int64)),
         b.c([2], np.int64), out="logits")
    return finish(b, [helper.make_tensor_value_info("image", F32, [batch, 1, 256, 256]),
                      helper.make_tensor_value_info("timesteps", TensorProto.INT64, [batch])],
                  [helper.make_tensor_value_info("logits", F32, [batch, 2])])


# ---------------------------------------------------------------------------------------------
# MedNeXt 3-D classifier
# ---------------------------------------------------------------------------------------------
def inorm(b: B, x, C):   # GroupNorm(num_groups=C, C) == instance norm + affine
    return b.op("InstanceNormalization", x, b.w((C,), 1.0), b.w((C,), 0.01), epsilon=1e-5)


def mednext_block(b: B, x, C):
    h = inorm(b, b.conv(x, C, C, 3, pad=1, groups=C, dims=3), C)
    h = b.conv(b.gelu(b.conv(h, C, 4 * C, 1, dims=3)), 4 * C, C, 1, dims=3)
    return b.add(x, h)


def mednext_down(b: B, x, C):
    h = inorm(b, b.conv(x, C, C, 3, stride=2, pad=1, groups=C, dims=3), C)
    h = b.conv(b.gelu(b.conv(h, C, 4 * C, 1, dims=3)), 4 * C, 2 * C, 1, dims=3)
    return b.add(h, b.conv(x, C, 2 * C, 1, stride=2, dims=3))


def build_mednext():
    b = B("mednext_realsize", 3)
    x = b.op("Cast", "image", to=F32)
    h = b.conv(x, 1, 32, 3, stride=2, pad=0, dims=3)                         # 159x159x111
    C = 32
    for stage in range(5):
        for _ in range(2):
            h = mednext_block(b, h, C)
        if stage < 4:
            h = mednext_down(b, h, C)
            C *= 2
    h = b.op("GlobalAveragePool", h)
    h = b.op("MatMul", b.reshape(h, [1, 512]), b.w((512, 22), 1 / math.sqrt(512)))
    b.op("Add", h, b.w((22,), 0.01), out="logits")
    return finish(b, [helper.make_tensor_value_info("image", TensorProto.FLOAT16, [1, 1, 320, 320, 224])],
                  [helper.make_tensor_value_info("logits", F32, [1, 22])])


# ---------------------------------------------------------------------------------------------
# fVLM (3-D ViT-B + organ pooling + prompt similarities)
# ---------------------------------------------------------------------------------------------
def build_fvlm():
    b = B("fvlm_realsize", 4)
    D, N = 768, 1386
    x = b.conv("image", 1, D, (16, 16, 32), stride=(16, 16, 32), dims=3)    # [1,768,7,18,11]
    x = b.op("Transpose", b.reshape(x, [1, D, N]), perm=[0, 2, 1])
    x = b.add(x, b.w((1, N, D), 0.02))
    levels = []
    for i in range(12):
        h = b.ln(x, D)
        qkv = b.linear(h, D, 3 * D)
        qkv = b.op("Transpose", b.reshape(qkv, [1, N, 3, 12, 64]), perm=[2, 0, 3, 1, 4])
        q, k, v = (b.op("Squeeze", t, b.c([0], np.int64)) for t in b.split(qkv, 0, 3))
        att = b.op("Softmax", b.mul(b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2])), b.c(0.125)), axis=-1)
        o = b.reshape(b.op("Transpose", b.op("MatMul", att, v), perm=[0, 2, 1, 3]), [1, N, D])
        x = b.add(x, b.linear(o, D, D))
        x = b.add(x, b.linear(b.gelu(b.linear(b.ln(x, D), D, 3072)), 3072, D))
        if i + 1 in (3, 6, 9):
            levels.append(x)
    levels.append(b.ln(x, D))
    kv = b.op("Concat", *levels, axis=1)                                     # [1, 4N, 768]
    m = b.op("MaxPool", "organ_mask", kernel_shape=[16, 16, 32], strides=[16, 16, 32])
    m = b.op("Tile", b.reshape(m, [1, 1, 1, N]), b.c([1, 1, 1, 4], np.int64))  # [1,1,1,4N]
    madd = b.mul(b.sub(b.c(1.0), m), b.c(-1e4))
    qtok = b.op("Gather", b.w((4, 1, D), 0.02), "organ", axis=0)             # [1,1,768]
    hs = lambda t, n: b.op("Transpose", b.reshape(t, [1, n, 4, 192]), perm=[0, 2, 1, 3])  # noqa: E731
    q = hs(b.linear(qtok, D, D), 1)
    k = hs(b.linear(kv, D, D), 4 * N)
    v = hs(b.linear(kv, D, D), 4 * N)
    att = b.op("Softmax", b.add(b.mul(b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2])),
                                       b.c(1 / math.sqrt(192))), madd), axis=-1)
    o = b.reshape(b.op("Transpose", b.op("MatMul", att, v), perm=[0, 2, 1, 3]), [1, 1, D])
    o = b.linear(o, D, D)
    proj = b.op("Squeeze", b.op("Gather", b.w((4, D, 256), 1 / math.sqrt(D)), "organ", axis=0), b.c([0], np.int64))
    f = b.l2norm(b.op("MatMul", b.reshape(o, [1, D]), proj))                 # [1,256]
    txt = b.rng.standard_normal((256, 36), dtype=np.float32)
    txt /= np.linalg.norm(txt, axis=0, keepdims=True)
    b.op("Reshape", b.mul(b.op("MatMul", f, b.c(txt)), b.c(np.float32(1 / 0.07))), b.c([1, 18, 2], np.int64), out="logits")
    shp = [1, 1, 112, 288, 352]
    return finish(b, [helper.make_tensor_value_info("image", F32, shp), helper.make_tensor_value_info("organ_mask", F32, shp),
                      helper.make_tensor_value_info("organ", TensorProto.INT64, [1])],
                  [helper.make_tensor_value_info("logits", F32, [1, 18, 2])])


# ---------------------------------------------------------------------------------------------
def count(model: onnx.ModelProto):
    """(params, GFLOPs) of MatMul / Gemm / Conv from ONNX shape inference."""
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    # shape inference on a copy whose big float weights are graph inputs (shapes only)
    big = lambda t: t.data_type == TensorProto.FLOAT and int(np.prod(t.dims)) > 4096  # noqa: E731
    light = onnx.ModelProto()
    light.CopyFrom(model)
    keep = [t for t in light.graph.initializer if not big(t)]
    moved = [t for t in light.graph.initializer if big(t)]
    del light.graph.initializer[:]
    light.graph.initializer.extend(keep)
    for t in moved:
        light.graph.input.append(helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)))
    inf = shape_inference.infer_shapes(light, data_prop=True)
    for v in list(inf.graph.value_info) + list(inf.graph.input) + list(inf.graph.output):
        d = [x.dim_value for x in v.type.tensor_type.shape.dim]
        if d and all(x > 0 for x in d):
            dims[v.name] = d
    flops, unknown = 0.0, 0
    for n in inf.graph.node:
        if n.op_type in ("MatMul", "Gemm"):
            if n.output[0] in dims and n.input[0] in dims:
                flops += 2.0 * np.prod(dims[n.output[0]]) * dims[n.input[0]][-1]
            else:
                unknown += 1
        elif n.op_type == "Conv":
            if n.output[0] in dims and n.input[1] in dims:
                flops += 2.0 * np.prod(dims[n.output[0]]) * np.prod(dims[n.input[1]][1:])
            else:
                unknown += 1
    if unknown:
        print(f"[realsize] warning: {unknown} MatMul/Conv nodes without inferred shapes (not counted)", file=sys.stderr)
    return params, flops / 1e9


def session(model: onnx.ModelProto, provider: str, threads: int):
    import onnxruntime as ort
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    provs = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    return ort.InferenceSession(model.SerializeToString(), so, providers=provs)


def feeds_for(name: str, rng):
    if name == "ctclip":
        return {"image": rng.uniform(-1, 1, (1, 1, 240, 480, 480)).astype(np.float32)}
    if name == "diffusion":
        return {"image": rng.uniform(-1, 1, (16, 1, 256, 256)).astype(np.float32), "timesteps": np.zeros(16, np.int64)}
    if name == "mednext":
        return {"image": rng.standard_normal((1, 1, 320, 320, 224)).astype(np.float16)}
    shp = (1, 1, 112, 288, 352)
    mask = np.zeros(shp, np.float32)
    mask[:, :, 20:90, 40:250, 30:320] = 1.0
    return {"image": rng.uniform(0, 1, shp).astype(np.float32), "organ_mask": mask, "organ": np.array([0], np.int64)}


BUILD = {"ctclip": build_ctclip, "diffusion": build_diffusion, "mednext": build_mednext, "fvlm": build_fvlm}
# passes of the graph per study
PASSES = {"ctclip": 1, "diffusion": 14, "mednext": 1, "fvlm": 3}


def bench(name, model, provider, threads, runs, passes_timed, rng):
    t0 = time.perf_counter()
    s = session(model, provider, threads)
    t_load = time.perf_counter() - t0
    feeds = feeds_for(name, rng)
    t0 = time.perf_counter()
    s.run(None, feeds)                          # warm-up
    t_warm = time.perf_counter() - t0
    times = []
    for _ in range(runs * passes_timed):
        t0 = time.perf_counter()
        s.run(None, feeds)
        times.append(time.perf_counter() - t0)
    per_pass = float(np.median(times))
    return {"session_s": round(t_load, 2), "warmup_ms": round(1000 * t_warm, 1), "per_pass_ms": round(1000 * per_pass, 1),
            "timed_passes": len(times), "study_ms": round(1000 * per_pass * PASSES[name], 1),
            "extrapolated": passes_timed < PASSES[name]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="ctclip,diffusion,mednext,fvlm")
    p.add_argument("--runs", type=int, default=1, help="timed studies per model (after one warm-up pass)")
    p.add_argument("--diffusion-batches", type=int, default=14,
                   help="batches timed per diffusion study (< 14: the study time is extrapolated)")
    p.add_argument("--fvlm-passes", type=int, default=3, help="organ passes timed per fVLM study (< 3: extrapolated)")
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = ORT default)")
    p.add_argument("--cuda", action="store_true", help="also time the CUDAExecutionProvider (onnxruntime-gpu)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    import onnxruntime as ort
    rng = np.random.default_rng(0)
    out = {"_env": {"onnxruntime": ort.__version__, "providers": ort.get_available_providers(), "cpus": os.cpu_count(),
                    "note": "random weights, real input sizes and architectures; ms per study"}}
    for name in [m for m in a.models.split(",") if m]:
        t0 = time.perf_counter()
        model = BUILD[name]()
        params, gflops = count(model)
        build_s = time.perf_counter() - t0
        timed = {"diffusion": a.diffusion_batches, "fvlm": a.fvlm_passes}.get(name, 1)
        r = {"params": params, "gflops_estimate": round(gflops * PASSES[name], 1),
             "gflops_per_pass": round(gflops, 1), "passes_per_study": PASSES[name], "build_s": round(build_s, 1)}
        cpu = bench(name, model, "CPUExecutionProvider", a.threads, a.runs, timed, rng)
        r["cpu_ms"] = cpu["study_ms"]
        r["cpu"] = cpu
        if a.cuda:
            if "CUDAExecutionProvider" in ort.get_available_providers():
                cu = bench(name, model, "CUDAExecutionProvider", a.threads, max(a.runs, 3), PASSES[name], rng)
                r["cuda_ms"] = cu["study_ms"]
                r["cuda"] = cu
            else:
                r["cuda_ms"] = None
                r["cuda"] = "CUDAExecutionProvider not available (install onnxruntime-gpu)"
        out[name] = r
        print(f"[realsize] {name}: {json.dumps(r)}", file=sys.stderr, flush=True)
        del model
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        with open(a.json, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
