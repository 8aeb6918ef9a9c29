"""The ONNX operator allowlist shared by the safety analysis and the executor.

Only operators generators actually use are allowed (the default ONNX domain only). Anything
else — custom domains, Loop/Scan, string ops, ML ops — is reported by name and refused, so an
uploaded graph can never reach code paths nobody reviewed. Some allowed operators are
*recorded*: they execute, but static model inspection (Rawat et al., arXiv 2108.01644, §5.1)
flags them because they obfuscate gradients or make outputs stochastic, which hides a
backdoor from optimization-based output inspection.
"""

from __future__ import annotations

# Default-domain names under which ONNX ops live ("" and its alias "ai.onnx").
DEFAULT_DOMAINS: frozenset[str] = frozenset({"", "ai.onnx"})

ALLOWED_OPS: frozenset[str] = frozenset(
    {
        # weight-bearing layers
        "Gemm",
        "MatMul",
        "Conv",
        "ConvTranspose",
        # normalisation
        "BatchNormalization",
        "InstanceNormalization",
        "LayerNormalization",
        # activations
        "Relu",
        "LeakyRelu",
        "PRelu",
        "Elu",
        "Selu",
        "Sigmoid",
        "HardSigmoid",
        "Tanh",
        "Softplus",
        "Softmax",
        "LogSoftmax",
        "Gelu",
        "Erf",
        # resampling and shape plumbing
        "Resize",
        "Upsample",
        "Reshape",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Transpose",
        "Concat",
        "Slice",
        "Split",
        "Pad",
        "Gather",
        "Expand",
        "Tile",
        "Shape",
        "Size",
        "Constant",
        "ConstantOfShape",
        "Identity",
        "Cast",
        "CastLike",
        "Range",
        "Einsum",
        # arithmetic
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Pow",
        "Sqrt",
        "Neg",
        "Abs",
        "Exp",
        "Log",
        "Reciprocal",
        "Min",
        "Max",
        "Sum",
        "Mean",
        "Clip",
        "Mod",
        # reductions
        "ReduceMean",
        "ReduceSum",
        "ReduceMax",
        "ReduceMin",
        "ReduceL2",
        "ReduceSumSquare",
        # comparisons, logic and selection (latent-dependent control flow is what a bypass uses)
        "Less",
        "Greater",
        "Equal",
        "LessOrEqual",
        "GreaterOrEqual",
        "Not",
        "And",
        "Or",
        "Xor",
        "Where",
        "If",
        # recorded: executed, but flagged by static checks
        "Dropout",
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "Round",
        "Floor",
        "Ceil",
        "Sign",
    }
)

# op -> why static model inspection cares about it
RECORDED_OPS: dict[str, str] = {
    "Dropout": "dropout",
    "RandomNormal": "stochastic",
    "RandomUniform": "stochastic",
    "RandomNormalLike": "stochastic",
    "RandomUniformLike": "stochastic",
    "Round": "rounding",
    "Floor": "rounding",
    "Ceil": "rounding",
    "Sign": "rounding",
}

# Ops whose output is chosen by a data-dependent condition: the signature of a computation
# bypass "if z in trigger set: G_target(z) else G(z)" (paper §3.4).
CONTROL_FLOW_OPS: frozenset[str] = frozenset({"If", "Where"})
COMPARISON_OPS: frozenset[str] = frozenset({"Less", "Greater", "Equal", "LessOrEqual", "GreaterOrEqual"})


def is_allowed(domain: str, op_type: str) -> bool:
    """Whether the executor runs this (domain, op_type)."""
    return domain in DEFAULT_DOMAINS and op_type in ALLOWED_OPS
