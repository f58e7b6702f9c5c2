"""The PostgreSQL schema's migrations, ``NNNN_name.sql``: package data, read
by ``chalicelib.adapters.postgres.migrations`` through importlib.resources.
They ship in the Lambda package (the deploy's migration step runs them
inside the VPC) and in the installed package (``sessionsync migrate``)."""
