"""The Spark engine (`tsops stream --engine spark`): data sources, the stateful query, the driver."""
