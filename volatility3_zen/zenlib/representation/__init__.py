"""Plain dataclasses that readers produce and analysis consumes, with a versioned JSON form."""
