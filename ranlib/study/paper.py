"""The paper's own numbers, as data.

Everything here is quoted from Wang et al., *Residual Attention Network for Image
Classification*, CVPR 2017 (arXiv 1704.06904v1), or counted from the official Caffe
deploy files (fwang91/residual-attention-network). These are the **paper's** numbers,
never ours: the book labels them so, and nothing in ranlib writes them into a results file
as a measurement.

Errors are top-1 test error in %, single model, single crop.
"""

from __future__ import annotations

CITATION = "Wang et al., Residual Attention Network for Image Classification, CVPR 2017"

# Table 1: attention type, CIFAR-10, Attention-56 (keys are ranlib's `attention=` values).
TABLE1_ATTENTION_TYPE = {"mixed": 5.52, "channel": 6.24, "spatial": 6.33}

# Table 3: ARL ((1+M)*T) vs NAL (M*T), CIFAR-10. model -> {"arl": err, "nal": err}.
TABLE3_ARL_NAL = {
    "cifar_attention56": {"arl": 5.52, "nal": 5.89},
    "cifar_attention92": {"arl": 4.99, "nal": 5.35},
    "cifar_attention128": {"arl": 4.44, "nal": 5.57},
    "cifar_attention164": {"arl": 4.31, "nal": 7.18},
}

# Figure 4: mean absolute response per stage, normalised to stage 1 (read off the plot).
FIGURE4_STAGE_RESPONSE = {
    "Attention-164 ARL": [1.0, 0.52, 0.30],
    "Attention-164 NAL": [1.0, 0.016, 0.009],
    "ResNet-164": [1.0, 0.57, 0.30],
}

# Table 4: mask structure, CIFAR-10, Attention-56 (keys are ranlib's `mask=` values).
TABLE4_MASK_STRUCTURE = {"local": 6.48, "encoder_decoder": 5.52}

# Table 5: label noise on CIFAR-10. noise level (1 - r) -> {model: err}.
TABLE5_LABEL_NOISE = {
    0.1: {"cifar_resnet164": 5.93, "cifar_attention92": 5.15},
    0.3: {"cifar_resnet164": 6.61, "cifar_attention92": 5.79},
    0.5: {"cifar_resnet164": 8.35, "cifar_attention92": 7.27},
    0.7: {"cifar_resnet164": 17.21, "cifar_attention92": 15.75},
}

# Table 6: CIFAR state of the art. model -> (params in millions, CIFAR-10 err, CIFAR-100 err).
TABLE6_CIFAR = {
    "cifar_resnet164": (1.7, 5.46, 24.33),
    "cifar_resnet1001": (10.3, 4.64, 22.71),
    "cifar_wrn16_8": (11.0, 4.81, 22.07),
    "cifar_wrn28_10": (36.5, 4.17, 20.50),
    "cifar_attention92": (1.9, 4.99, 21.71),
    "cifar_attention236": (5.1, 4.14, 21.16),
    "cifar_attention452": (8.6, 3.90, 20.45),
}

# Table 7: ImageNet. model -> dict(params M, GFLOPs (= multiply-adds), test size, top-1, top-5).
# Rows without a ranlib model (Inception-ResNet-v1/v2) are kept for context only.
TABLE7_IMAGENET = {
    "resnet152": dict(params=60.2, gflops=11.3, test_size=224, top1=22.16, top5=6.16),
    "attention56": dict(params=31.9, gflops=6.3, test_size=224, top1=21.76, top5=5.9),
    "resnext101": dict(params=44.5, gflops=7.8, test_size=224, top1=21.2, top5=5.6),
    "attentionnext56": dict(params=31.9, gflops=6.3, test_size=224, top1=21.2, top5=5.6),
    "inception_resnet_v1": dict(params=None, gflops=None, test_size=299, top1=21.3, top5=5.5),
    "attentioninception56": dict(params=31.9, gflops=6.3, test_size=299, top1=20.36, top5=5.29),
    "resnet200": dict(params=64.7, gflops=15.0, test_size=320, top1=20.1, top5=4.8),
    "inception_resnet_v2": dict(params=None, gflops=None, test_size=299, top1=19.9, top5=4.9),
    "attention92": dict(params=51.3, gflops=10.4, test_size=320, top1=19.5, top5=4.8),
}

# Counted from the official deploy files (conv + FC + BN scale/shift; multiply-adds at 224).
OFFICIAL_DEPLOY = {
    "attention56": dict(params=31.8e6, macs=6.27e9),
    "attention92": dict(params=52.5e6, macs=10.53e9),
    "attentionnext56": dict(params=31.3e6, macs=6.42e9),
}
