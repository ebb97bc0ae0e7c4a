"""The whole stack under supervisord as the tests and the benches start it (``harness.stack``): shared by
both, so it belongs to neither; the stages never import it."""
