"""Where events go: the embedded store, the console (table or JSON lines)."""
