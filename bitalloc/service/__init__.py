"""The planning service: FastAPI app, SQL store, job workers and API tokens.

Imported only by ``bitalloc serve`` / ``bitalloc worker`` / ``bitalloc token``: it needs the
``service`` extra (fastapi, uvicorn, sqlalchemy, alembic, psycopg).
"""
