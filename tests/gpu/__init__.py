# A package, so that pytest imports tests/gpu/conftest.py as `gpu.conftest`
# and leaves the top-level `conftest` (tests/conftest.py, which the tests
# beside this folder import helpers from) alone.
