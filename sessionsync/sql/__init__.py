"""The PostgreSQL schema's migrations, ``NNNN_name.sql``: package data, read
by ``sessionsync.migrations`` through importlib.resources."""
