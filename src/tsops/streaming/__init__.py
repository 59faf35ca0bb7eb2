"""Stream processing: sources and sinks behind small interfaces, keyed state written through
to the online store, dead letters, and the processor that ties them together."""
