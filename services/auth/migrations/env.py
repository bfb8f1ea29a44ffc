from paysaga.runtime.storage.migrations import run_in_alembic

run_in_alembic()
