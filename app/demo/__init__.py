"""The demo: a shop in PostgreSQL and its inventory in MySQL/MariaDB, captured into the lake.

The same pieces serve `make demo` (local services, no docker) and deploy/docker-compose.yml:
`lakeward demo setup` creates the databases' tables, `lakeward demo load` changes them,
`lakeward demo check` proves lake == source; `python -m lakeward.app.demo CONFIG` runs all of it
with the lakeward workers, showing live progress.
"""
