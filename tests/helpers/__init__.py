"""What the tests share that is not a test or a fixture: harnesses, clients and data.

Test modules and ``conftest.py`` files import from here, never from each other (and
``benchmarks`` imports its data from here too). Nothing here is collected by pytest.
"""
