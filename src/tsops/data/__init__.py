"""History loading and cleaning, the bundled weather data, and the synthetic generator."""
