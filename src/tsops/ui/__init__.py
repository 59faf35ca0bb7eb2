"""The live dashboard `tsops serve` serves at `/`: a data layer (`feed`, reading the project's
files and stores incrementally), its routes (`routes`) and one static page (`static/`)."""
