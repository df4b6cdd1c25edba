"""What the test modules share: builders, readers and the truth to compare against.

Nothing here is a test (no ``test_*`` module), and a test module imports helpers only from here, from
tests/stores/ or from tests/conftest.py, never from another test module: a scenario is written once.
"""
