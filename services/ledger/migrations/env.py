from paysaga.migrations import run_in_alembic

run_in_alembic()
