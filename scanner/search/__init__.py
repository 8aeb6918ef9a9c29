"""Output-inspection searches (Rawat et al., arXiv 2108.01644, Sec. 5.3): Closest-N, ReconD
optimisation with batched restarts, CMA-ES, guided trigger search, divergence search."""
