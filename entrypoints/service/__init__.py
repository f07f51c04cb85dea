"""``tuneship service``: OpenAI's files and fine-tuning jobs API and an inference front door, on one port.

A front door (the top floor): it composes the stages and nothing imports it.

- :mod:`.config`   -- the service's settings (one typed model; its fields are the command's flags)
- :mod:`.db`       -- records in SQL through SQLAlchemy, migrated by Alembic (``migrations/``)
- :mod:`.schemas`  -- HTTP request models, OpenAI-shaped errors and the OpenAI objects returned
- :mod:`.keys`     -- API keys (stored hashed; roles ``admin`` and ``user``)
- :mod:`.files`    -- uploads streamed to disk, and the training preflight's verdict on each file
- :mod:`.jobs`     -- fine-tuning jobs: create, validate, claim, cancel, events, checkpoints
- :mod:`.worker`   -- runs claimed jobs as ``tuneship train`` subprocesses and registers the result
- :mod:`.proxy`    -- the inference front door: routes a request to the server of its model
- :mod:`.app`      -- the FastAPI application (thin routes)
- :mod:`.service`  -- the process: database, vLLM, workers and the HTTP server, stopped together
"""
