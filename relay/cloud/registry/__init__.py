"""
The cloud registry: the source of truth for users, API keys, projects,
members, files and jobs (L{Registry}), in the tables of L{SCHEMA}.
"""

from relay.cloud.registry.schema import SCHEMA
from relay.cloud.registry.store import DEFAULT_PROJECT_NAME, Registry, clean_name, new_id

__all__ = ["DEFAULT_PROJECT_NAME", "SCHEMA", "Registry", "clean_name", "new_id"]
