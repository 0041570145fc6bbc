"""s4v_recognition."""
