"""Testing aids kept out of production code: tiny models per family, the demo pipeline, fault injection."""
