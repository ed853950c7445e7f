"""One embedding measurement of one runtime, run in its own process so thread settings and
memory never leak between runtimes:

    python -m benchmarks.embed_runners RUNTIME MODEL_DIR THREADS SENTENCES BATCH_SIZE CALLS [ONNX_FILE]

MODEL_DIR is a sentence-transformers folder (all-MiniLM-L6-v2). Prints one JSON line:

    {"load_s": model load (not counted), "batch_s": seconds for one call over the batch,
     "sent_per_s": SENTENCES / batch_s, "lat_ms": median ms of CALLS one-sentence calls,
     "dim": embedding width, "norm": [min, max] row norms,
     "check": the first 8 batch embeddings and the one-sentence embedding, for the driver's cosines}

Every runtime is timed from text to pooled, normalised float32 vectors, tokenization included.
The batch is the first SENTENCES sentences of SST-2's dev set, embedded in one call per runtime
(sentence-transformers: encode(batch_size=BATCH_SIZE); ONNX Runtime: the same length-sorted
chunks of BATCH_SIZE as sentence-transformers; corelm: llm.embed(texts) with its own batching).
The one-sentence call is warmed up before timing.

`python -m benchmarks.embed_runners export MODEL_DIR OUT_DIR` writes the ONNX files the ort
runtimes use (see export_onnx).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SST2_DEV = ROOT.parent / "shared" / "data" / "labelled" / "sst2" / "dev.tsv"
SHORT = "how do I reset my password"
CHECK_ROWS = 8
WARMUP_CALLS = 10
FUSED_OPS = {
    "Attention",
    "QAttention",
    "EmbedLayerNormalization",
    "QEmbedLayerNormalization",
    "SkipLayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "MatMulInteger",
    "MultiHeadAttention",
}  # reported by export_onnx


def sentences(n: int, path: Path = SST2_DEV) -> list[str]:
    """The first n sentences of SST-2's dev set (tab-separated, header `sentence<TAB>label`)."""
    out = []
    with open(path, encoding="utf-8") as f:
        next(f)
        for line in f:
            if len(out) == n:
                break
            text = line.rstrip("\n").rsplit("\t", 1)[0].strip()
            if text:
                out.append(text)
    if len(out) < n:
        raise ValueError(f"{path} has only {len(out)} sentences, {n} asked")
    return out


def st_config(model_dir: str) -> dict:
    """What the sentence-transformers folder says about pooling, normalisation and length."""
    d = Path(model_dir)
    modules = json.loads((d / "modules.json").read_text())
    types = [m["type"] for m in modules]
    pooling = next(d / m["path"] for m in modules if m["type"].endswith("models.Pooling"))
    pool = json.loads((pooling / "config.json").read_text())
    modes = [k for k, v in pool.items() if k.startswith("pooling_mode_") and v]
    if modes != ["pooling_mode_mean_tokens"]:
        raise ValueError(f"{model_dir}: pooling {modes}, only mean pooling is implemented here")
    sbert = d / "sentence_bert_config.json"
    max_len = json.loads(sbert.read_text()).get("max_seq_length", 512) if sbert.exists() else 512
    return {"normalize": any(t.endswith("models.Normalize") for t in types), "max_seq_length": max_len}


def export_onnx(model_dir: str, out_dir: str) -> dict:
    """Export the HF BertModel inside model_dir to ONNX, then make the files ONNX Runtime runs:

    model.onnx        torch.onnx.export of BertModel -> last_hidden_state, dynamic batch and sequence
                      axes, eager attention, TorchScript exporter (dynamo=False): ORT's transformer
                      optimizer fuses its graph fully (EmbedLayerNormalization, 6 Attention), where it
                      finds no Attention in the dynamo exporter's graph (torch 2.13, ORT 1.32);
    model-opt.onnx    onnxruntime.transformers.optimizer (model_type "bert"), the offline fusions
                      (Attention, SkipLayerNorm, BiasGelu, ...) ORT's docs recommend for transformers;
    model-int8-per-channel.onnx
                      quant_pre_process (shape inference only) then quantize_dynamic of model-opt.onnx
                      (QInt8 weights, uint8 activations quantized at run time: QAttention,
                      MatMulInteger), the path ORT's docs give for BERT on CPU; per_channel=True:
                      per-tensor scales put the SST-2 check rows at cos 0.92-0.97 to fp32, per-channel
                      at 0.976-0.99, at the same speed.
    Files already there are kept. Returns {"fp32": path, "int8": path, "ops": fused op counts}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw, opt, q8 = out / "model.onnx", out / "model-opt.onnx", out / "model-int8-per-channel.onnx"
    if not raw.exists():
        import torch
        import transformers

        model = transformers.AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
        tok = transformers.AutoTokenizer.from_pretrained(model_dir)
        enc = tok(
            ["a first example sentence", "and another, longer example sentence here"], padding=True, return_tensors="pt"
        )
        names = ["input_ids", "attention_mask", "token_type_ids"]
        args = tuple(enc[k] for k in names)

        class Wrapped(torch.nn.Module):
            def __init__(self, m: torch.nn.Module) -> None:
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.m(
                    input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
                ).last_hidden_state

        tmp = out / "model.tmp.onnx"
        common = dict(input_names=names, output_names=["last_hidden_state"], opset_version=17)
        with torch.no_grad():
            try:  # the TorchScript exporter: its graph is the one ORT's BERT fusions match
                torch.onnx.export(
                    Wrapped(model).eval(),
                    args,
                    str(tmp),
                    dynamo=False,
                    **common,
                    dynamic_axes={k: {0: "batch", 1: "sequence"} for k in [*names, "last_hidden_state"]},
                )
            except Exception as e:  # gone from a later torch: the dynamo exporter (fewer fusions)
                print(f"TorchScript ONNX export failed ({e!r}); using dynamo=True", file=sys.stderr)
                batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
                torch.onnx.export(
                    Wrapped(model).eval(),
                    args,
                    str(tmp),
                    dynamo=True,
                    external_data=False,
                    **common,
                    dynamic_shapes={k: {0: batch, 1: seq} for k in names},
                )
        tmp.rename(raw)
    if not opt.exists():
        from onnxruntime.transformers.optimizer import optimize_model

        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        m = optimize_model(
            str(raw),
            model_type="bert",
            num_heads=cfg["num_attention_heads"],
            hidden_size=cfg["hidden_size"],
        )
        m.save_model_to_file(str(opt) + ".tmp")
        os.replace(str(opt) + ".tmp", opt)
    if not q8.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.shape_inference import quant_pre_process

        # ORT's quantization pre-processing, its graph optimisation skipped (the optimizer above did
        # it): symbolic shape inference, which knows the fused contrib ops' output types.
        pre = out / "model-opt-infer.onnx"
        quant_pre_process(str(opt), str(pre), skip_optimization=True)
        quantize_dynamic(str(pre), str(q8) + ".tmp", weight_type=QuantType.QInt8, per_channel=True)
        os.replace(str(q8) + ".tmp", q8)
        pre.unlink()
    import onnx

    def ops(f: Path) -> dict:
        names = [n.op_type for n in onnx.load(str(f), load_external_data=False).graph.node]
        return {op: names.count(op) for op in sorted(set(names)) if op in FUSED_OPS}

    return {"fp32": str(opt), "int8": str(q8), "ops": {"fp32": ops(opt), "int8": ops(q8)}}


def _mean_pool(hidden: np.ndarray, mask: np.ndarray, normalize: bool) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    v = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
    if normalize:
        v /= np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
    return v.astype(np.float32)


def load_st(model_dir: str, threads: int, batch_size: int, dtype: str):
    import torch

    torch.set_num_threads(threads)
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu")
    if dtype == "bf16":
        model.bfloat16()  # sentence-transformers' efficiency docs: model_kwargs dtype, "or model.bfloat16()"

    def embed(texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            e = model.encode(texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
        return e.float().numpy()

    return embed


def load_ort(model_dir: str, threads: int, batch_size: int, onnx_file: str):
    import onnxruntime as ort
    import transformers

    cfg = st_config(model_dir)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(onnx_file, so, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in sess.get_inputs()}
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)

    def run(texts: list[str]) -> np.ndarray:
        enc = tok(
            texts, padding=True, truncation="longest_first", max_length=cfg["max_seq_length"], return_tensors="np"
        )
        feed = {k: enc[k].astype(np.int64) for k in inputs}
        (hidden,) = sess.run(["last_hidden_state"], feed)
        return _mean_pool(hidden, enc["attention_mask"], cfg["normalize"])

    def embed(texts: list[str]) -> np.ndarray:
        # Same batching as sentence-transformers' encode: longest first, chunks of batch_size.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        parts = [run([texts[i] for i in order[s : s + batch_size]]) for s in range(0, len(texts), batch_size)]
        out = np.concatenate(parts)
        res = np.empty_like(out)
        res[order] = out
        return res

    return embed


def load_corelm(model_dir: str, threads: int, quant: str | None):
    import corelm

    llm = corelm.load(model_dir, threads=threads, quant=quant)

    def embed(texts: list[str]) -> np.ndarray:
        return np.asarray(llm.embed(texts), dtype=np.float32)

    return embed


def measure(
    runtime: str, model_dir: str, threads: int, n: int, batch_size: int, calls: int, onnx_file: str = ""
) -> dict:
    batch = sentences(n)
    t0 = time.perf_counter()
    if runtime in ("st-fp32", "st-bf16"):
        embed = load_st(model_dir, threads, batch_size, runtime.split("-")[1])
    elif runtime in ("ort-fp32", "ort-int8"):
        embed = load_ort(model_dir, threads, batch_size, onnx_file)
    elif runtime in ("corelm-f32", "corelm-q8_0"):
        embed = load_corelm(model_dir, threads, None if runtime == "corelm-f32" else "q8_0")
    else:
        raise ValueError(f"unknown runtime {runtime}")
    load_s = time.perf_counter() - t0

    embed(batch[: min(n, 32)])  # warm up the batched path
    t0 = time.perf_counter()
    vecs = embed(batch)
    batch_s = time.perf_counter() - t0
    if vecs.shape[0] != n:
        raise ValueError(f"{runtime}: {vecs.shape[0]} embeddings for {n} sentences")

    for _ in range(WARMUP_CALLS):
        one = embed([SHORT])
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        one = embed([SHORT])
        times.append(time.perf_counter() - t0)

    norms = np.linalg.norm(vecs, axis=1)
    check = np.concatenate([vecs[:CHECK_ROWS], one[:1]])
    return {
        "load_s": round(load_s, 3),
        "batch_s": batch_s,
        "sent_per_s": n / batch_s,
        "lat_ms": 1000 * statistics.median(times),
        "dim": int(vecs.shape[1]),
        "norm": [float(norms.min()), float(norms.max())],
        "check": np.round(check.astype(np.float64), 6).tolist(),
    }


if __name__ == "__main__":
    if sys.argv[1] == "export":
        print(json.dumps(export_onnx(sys.argv[2], sys.argv[3])))
    else:
        rt, path, t, n, bs, calls = sys.argv[1:7]
        print(json.dumps(measure(rt, path, int(t), int(n), int(bs), int(calls), *sys.argv[7:8])))
