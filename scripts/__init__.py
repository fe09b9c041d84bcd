"""Helpers run from a clone; importable by the tests."""
