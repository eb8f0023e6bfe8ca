"""Model importers, one module per framework; safe loading lives here."""
