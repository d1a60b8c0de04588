"""Real servers for tests (sandbox carrier, S3, capturing relay), each a pytest plugin module.

Every module here is loaded as a plugin by tests/conftest.py, so its fixtures are available
to all tests without imports.
"""
