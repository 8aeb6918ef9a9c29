#!/bin/sh
# One-shot job: bring the database schema to the latest Alembic revision.
set -eu
exec alembic -c /app/alembic.ini upgrade head
