"""Tests against throwaway streaming-replication PostgreSQL clusters (see ``cluster``)."""
