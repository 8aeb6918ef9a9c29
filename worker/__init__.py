"""Celery worker: thin, idempotent tasks that run scanner suites on stored scans. Never imports api/."""
