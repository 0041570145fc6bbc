"""s4v_retrieval."""
