"""Persistence shared by the API and the worker: settings, database, object storage, API keys.

Never imported by `scanner/` (the science library stays free of web/queue/database code).
"""
