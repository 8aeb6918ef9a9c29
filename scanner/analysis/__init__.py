"""Model-analysis helpers for the static (SMI) and dynamic (DMI) checks.

- `dataflow`: a framework-neutral dataflow graph built from an ONNX graph or from a torch module
  (via `torch.export`, which records the computation symbolically), with latent taint analysis.
- `blocks`: recovery of hidden block structure in weight matrices (ReX, Rawat et al. IV-B).
- `activations`: forward hooks that summarise per-unit activations on P_sample.
- `images`: small PNG writers for evidence pictures.
"""
