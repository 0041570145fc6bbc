"""s4v_core."""
