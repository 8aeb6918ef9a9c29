"""dgmscan scanner: a plain library that loads untrusted generators safely, mounts the
backdoor attacks of Rawat et al. ("The Devil is in the GAN", arXiv 2108.01644) and runs the
defense suite. It never imports web, queue or database code."""

__version__ = "0.1.0"
