"""Request-time recommendation: recall → filter → rank → explain, each stage built from injected parts."""
