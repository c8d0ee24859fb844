"""Test-only helpers: tiny models and datasets the unit, integration and fault tests (and bench/) build on."""
