"""dgmscan benchmarks: detection quality on a model zoo, the paper's Table I side by side, speed and scale."""
