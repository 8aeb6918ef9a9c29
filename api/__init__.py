"""The dgmscan REST API (FastAPI). Imports persistence/, never the scanner's torch code."""
