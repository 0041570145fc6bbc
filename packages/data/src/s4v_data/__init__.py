"""s4v_data."""
