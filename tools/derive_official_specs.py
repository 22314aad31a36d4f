"""Derive the facts the faithfulness tests need from the official Caffe deploy files.

The deploy files (fwang91/residual-attention-network) carry no licence, so ranlib does not
ship them. This script reads them from ``../shared/paper/official-prototxt`` and writes only
derived facts to ``tests/data/official_deploy_specs.json``: the multiset of convolution shapes
(in, out, kernel, stride, pad, groups, bias), the parameter count (conv + FC + BN scale/shift)
and the multiply-adds at 224x224 — by shape inference over the layer graph.

    python tools/derive_official_specs.py [PROTOTXT_DIR]
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = ROOT.parent / "shared" / "paper" / "official-prototxt"
OUT = ROOT / "tests" / "data" / "official_deploy_specs.json"
NETWORKS = {"attention56": "Attention-56", "attention92": "Attention-92", "attentionnext56": "AttentionNeXt-56"}


def _field(body: str, key: str, default=None):
    match = re.search(rf"\b{key}:\s*(\w+)", body)
    return match.group(1) if match else default


def parse_layers(text: str) -> list[dict]:
    layers = []
    for body in re.findall(r"layer\s*\{(.*?)\n\}", text, re.S):
        layers.append(dict(
            name=_field(body, "name").strip('"') if _field(body, "name") else None,
            type=re.search(r'type:\s*"([^"]+)"', body).group(1),
            bottoms=re.findall(r'bottom:\s*"([^"]+)"', body),
            top=re.findall(r'top:\s*"([^"]+)"', body)[0],
            body=body,
        ))
    return layers


def derive(path: Path) -> dict:
    """Shape-infer one deploy file; return its convolutions, parameters and multiply-adds."""
    text = path.read_text()
    dims = [int(d) for d in re.findall(r"input_dim:\s*(\d+)", text)]
    shapes = {"data": tuple(dims[1:])}  # blob -> (C, H, W)
    convs: list[tuple] = []
    params = macs = 0
    for layer in parse_layers(text):
        kind, body = layer["type"], layer["body"]
        c, h, w = shapes[layer["bottoms"][0]]
        if kind == "Convolution":
            out = int(_field(body, "num_output"))
            k, s, p = int(_field(body, "kernel_size")), int(_field(body, "stride", 1)), int(_field(body, "pad", 0))
            g = int(_field(body, "group", 1))
            bias = _field(body, "bias_term", "true") == "true"
            oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            convs.append((c, out, k, s, p, g, bias))
            weights = out * (c // g) * k * k
            params += weights + (out if bias else 0)
            macs += weights * oh * ow
            shapes[layer["top"]] = (out, oh, ow)
        elif kind == "Pooling":
            k, s = int(_field(body, "kernel_size")), int(_field(body, "stride", 1))
            # Caffe rounds pooled sizes up (ceil mode).
            shapes[layer["top"]] = (c, math.ceil((h - k) / s) + 1, math.ceil((w - k) / s) + 1)
        elif kind == "Interp":
            # The second bottom gives the output size only (Caffe's two-input Interp).
            _, h2, w2 = shapes[layer["bottoms"][1]]
            shapes[layer["top"]] = (c, h2, w2)
        elif kind == "InnerProduct":
            out = int(_field(body, "num_output"))
            params += c * h * w * out + out
            macs += c * h * w * out
            shapes[layer["top"]] = (out, 1, 1)
        else:
            if kind == "BN":
                params += 2 * c  # scale and shift
            shapes[layer["top"]] = (c, h, w)
    counted = Counter(convs)
    return dict(
        source=path.name,
        num_convs=len(convs),
        convs=sorted([list(k) + [n] for k, n in counted.items()]),
        params=params,
        macs=macs,
    )


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else DEFAULT_DIR
    specs = {name: derive(folder / f"{stem}-deploy.prototxt") for name, stem in NETWORKS.items()}
    OUT.write_text(json.dumps(specs, indent=1) + "\n")
    for name, spec in specs.items():
        print(f"{name}: {spec['num_convs']} convs, {spec['params'] / 1e6:.2f}M params, {spec['macs'] / 1e9:.2f}G MACs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
