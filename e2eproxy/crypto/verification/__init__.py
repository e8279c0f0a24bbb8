"""Interactive key verification (spec "Device verification")."""
