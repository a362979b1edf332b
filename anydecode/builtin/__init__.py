"""anydecode's built-in plugins: one module per algorithm family, registered through the public hooks."""
